"""Generated CRDs: up to date on disk, structural (what the apiserver accepts), with the wanted extras."""

from __future__ import annotations

from pathlib import Path

import yaml

from lvr_operator.cli_cmds import generated_files
from lvr_operator.crdgen import crd, render_all
from lvr_operator.api.kinds import kind_by_name

ROOT = Path(__file__).resolve().parents[2]
CRDS = ROOT / "crds"
CHART_CRDS = ROOT / "charts" / "longvideo-rl" / "crds"
_FORBIDDEN = {"$ref", "$defs", "anyOf", "oneOf", "allOf", "prefixItems", "title", "default", "const"}


def test_checked_in_crds_are_not_stale():
    for path, text in generated_files(CRDS, CHART_CRDS.parent).items():
        assert path.exists() and path.read_text() == text, f"{path} is stale: run `lvr crds` and commit"


def test_chart_crds_are_the_top_level_crds():
    """Helm installs the chart's crds/, `kubectl apply -f crds/` the top-level ones: the same files, and
    nothing else in either (crds/rbac.yaml is gone: RBAC lives in the chart's templates)."""
    top = {p.name: p.read_text() for p in CRDS.glob("*.yaml")}
    assert top == {p.name: p.read_text() for p in CHART_CRDS.glob("*.yaml")}
    assert set(top) == set(render_all()) and "rbac.yaml" not in top


def test_lvr_crds_writes_both_directories_and_check_names_stale_files(tmp_path, capsys):
    from lvr_trainer.cli import main

    crds, chart = tmp_path / "crds", tmp_path / "chart"
    (crds).mkdir()
    (crds / "rbac.yaml").write_text("kind: ClusterRole\n")            # not generated: removed
    assert main(["crds", "--out", str(crds), "--chart", str(chart), "--check"]) == 1
    assert "rbac.yaml: not generated" in capsys.readouterr().out
    assert main(["crds", "--out", str(crds), "--chart", str(chart)]) == 0
    assert not (crds / "rbac.yaml").exists() and (chart / "files" / "rbac-rules.yaml").exists()
    assert {p.name for p in crds.iterdir()} == {p.name for p in (chart / "crds").iterdir()} == set(render_all())
    assert main(["crds", "--out", str(crds), "--chart", str(chart), "--check"]) == 0
    (chart / "crds" / "longvideo.dev_rljobs.yaml").write_text("stale\n")
    assert main(["crds", "--out", str(crds), "--chart", str(chart), "--check"]) == 1
    assert "chart/crds/longvideo.dev_rljobs.yaml: stale; run `lvr crds`" in capsys.readouterr().out


def _walk(node, path="schema"):
    yield path, node
    for key, child in (node.get("properties") or {}).items():
        yield from _walk(child, f"{path}.{key}")
    if isinstance(node.get("items"), dict):
        yield from _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk(node["additionalProperties"], f"{path}{{}}")


def test_schemas_are_structural():
    for kind in ("RLJob", "SFTJob", "LongVideoDataset"):
        schema = crd(kind_by_name(kind))["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        for path, node in _walk(schema):
            assert not (_FORBIDDEN & set(node)), f"{kind} {path}: {_FORBIDDEN & set(node)}"
            assert node.get("type") or node.get("x-kubernetes-preserve-unknown-fields"), f"{kind} {path}: no type"
            assert not ("properties" in node and "additionalProperties" in node), f"{kind} {path}"
            if "exclusiveMinimum" in node:
                assert node["exclusiveMinimum"] is True and "minimum" in node


def test_required_enums_minimums_and_extras():
    rl = crd(kind_by_name("RLJob"))
    version = rl["spec"]["versions"][0]
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert set(spec["required"]) >= {"datasetRef", "model", "output"}
    assert spec["properties"]["rollout"]["properties"]["engine"]["enum"] == ["transformers", "vllm"]
    assert spec["properties"]["resources"]["properties"]["gpusPerNode"]["maximum"] == 8
    assert spec["properties"]["runPolicy"]["properties"]["backoffLimit"]["minimum"] == 0
    assert spec["properties"]["frames"]["nullable"] is True
    trainer = spec["properties"]["trainer"]
    assert trainer["x-kubernetes-preserve-unknown-fields"] is True and "train" in trainer["properties"]
    assert "required" not in trainer
    assert version["subresources"] == {"status": {}}
    cols = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert cols["Phase"] == ".status.phase" and cols["Reward"] == ".status.progress.reward" and "Age" in cols
    assert rl["spec"]["names"]["shortNames"] == ["rl", "rlj"]
    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    assert status["phase"]["enum"][-1] == "Suspended"


def test_files_parse_as_yaml_crds():
    for path in CRDS.glob("longvideo.dev_*.yaml"):
        doc = yaml.safe_load(path.read_text())
        assert doc["kind"] == "CustomResourceDefinition" and doc["spec"]["group"] == "longvideo.dev"
