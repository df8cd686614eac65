"""The dataset factory: one subject end to end, and the bookkeeping of a dataset root.

In: subject directories or URLs and a :class:`~.config.FactoryConfig`. Out: each subject's shards,
records and done marker (``subjects/{id}.json``), or a failure record; a finalised manifest of
complete subjects only. No Ray here: ``ray_jobs/build_dataset.py`` schedules :func:`~.process.process_subject`.

- :mod:`.config`: the options and the config hash. :mod:`.sources`: subject lists, ids, staging.
- :mod:`.subject`: the one subject pipeline (labels -> fit -> head frame -> novel views -> samples), also ``facegs refine``'s.
- :mod:`.process`: one subject into a dataset root. :mod:`.markers`: done markers, failures, finalize.
- :mod:`.capture`: the raw capture views as samples (a baseline).
"""
