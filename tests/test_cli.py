import subprocess
import sys


def lvr(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "lvr_trainer.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_help_lists_every_command_with_a_purpose():
    from lvr_trainer.cli import build_parser

    res = lvr("--help")
    assert res.returncode == 0
    flat = " ".join(res.stdout.split())  # argparse wraps long help lines
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert sub.choices, "no subcommands registered"
    for name, parser in sub.choices.items():
        help_line = next(a.help for a in sub._choices_actions if a.dest == name)
        assert help_line and len(help_line) > 10, name
        assert name in flat and " ".join(help_line.split()) in flat


def test_config_validate_reports_errors_without_traceback(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("model: {preset: tiny}\ndata: {train: x}\ntrain: {steps: 1, bogus: 2}\n")
    res = lvr("config", "validate", str(bad))
    assert res.returncode == 2 and "'train.bogus'" in res.stderr and "Traceback" not in res.stderr


def test_synth_prints_tables(tmp_path):
    res = lvr("data", "synth", "--out", str(tmp_path / "d"), "--videos", "3", "--seconds", "8", "--fps", "4",
              "--size", "64x64")
    assert res.returncode == 0, res.stderr
    assert "| split |" in res.stdout and "| train |" in res.stdout
    assert (tmp_path / "d" / "train.jsonl").exists()
    bad = lvr("data", "synth", "--out", str(tmp_path / "e"), "--size", "big")
    assert bad.returncode == 2 and "--size" in bad.stderr
