"""Evaluation by head pose: metrics, test sets, checkpoint comparison, reports.

In: parser checkpoints and labelled test views (synthetic grid subjects or a user's set). Out:
pose-binned metrics (confusion matrices, F1, mIoU, component-count errors), markdown and JSON
reports, plots and an HTML contact sheet with a rating form.

- :mod:`.confusion`: confusion matrices. :mod:`.metrics`: :class:`~.metrics.PoseBinnedEvaluator`.
- :mod:`.testsets`: test sets. :mod:`.compare`: checkpoints on one test set. :mod:`.parser`: one parser.
- :mod:`.tables`, :mod:`.plots`, :mod:`.sheet`, :mod:`.report`: what a person reads.
- :mod:`.wise`: choosing WiSE-FT's alpha on validation views.
"""
