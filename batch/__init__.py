"""Batch transform: classify every image of ``batch/<id>/input/`` with a SageMaker transform job.

- ``batch.keys``: where a batch lives in the bucket (Contract 3) and which batch ids are accepted;
- ``batch.transform``: the ``create_transform_job`` request, a pure function of explicit arguments;
- ``batch.predictions``: the per-image ``.out`` files summarised as ``predictions.csv``.

The control plane (``chalicelib``) decides when a batch starts and when its summary is written, and
calls these functions; this package imports nothing of ours. Standard library only: it runs on
Lambda, shipped beside ``chalicelib/`` by ``deploy.lambda_package``.
"""
