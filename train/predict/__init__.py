"""Using a trained run: predictions on shards or image files (infer), the evaluation report
(evaluation), output files (outputs) and a timm export for use without this project (export).
tools/predict.py is the entry point."""
