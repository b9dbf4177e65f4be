"""Pipeline stages: one module each, `run(params, layout) -> outputs` + a `python -m tasks.<stage>` entry.

Thin by design: read the stage's params section and input artifacts, call the library, write
outputs atomically. The file layout lives in `tasks/layout.py` (and, mirrored, in dvc.yaml).
"""
