"""Label review: scoring a run's samples (the objective's registry entry says how), the
detection metrics, the noise matrix, the suspects grid and the review page
(docs/architecture.md section 3). tools/rank_labels.py, tools/review_labels.py and
tools/review_study.py are its entry points. It sits above training (it reads runs and
checkpoints); training never imports it.
"""
