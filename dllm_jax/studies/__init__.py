"""Seeded studies built from the library's programs and evaluation (docs/studies.md): each is a
frozen design, cached per run so an interrupted study continues where it stopped, and a
summary with paired statistics. The scripts in ``scripts/`` only parse flags and call these."""
