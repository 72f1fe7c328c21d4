"""Evaluation: `lvr eval`'s scorers (strict and lenient) and the accuracy tables built from them."""
