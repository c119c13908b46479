"""List prices shipped with the code: what ``deploy.costs`` prints when the AWS Price List API does not answer.

USD, on demand, before any free tier. Every figure below was read in a public source named beside it; a
price not found there is absent, and ``deploy.costs`` prints it as "unknown" rather than guess (no price is
scaled from another size, region or component, however likely the result). Regions not listed here have
no table prices at all.

``REGIONS[region]``:

- ``prices_of``: when the region's figures were read (the oldest of them);
- ``hosting``, ``training``, ``transform``: USD per instance-hour of a realtime endpoint, a training job
  and a batch transform job, by instance type;
- ``serverless_gb_second``: a serverless endpoint's USD per second per GB of configured memory;
- ``requests``: the per-request services around SageMaker (``lambda_request``, ``lambda_gb_second``,
  ``api_request`` (REST API), ``s3_put``, ``s3_get``, ``eventbridge_aws_event``), USD per unit.

Sources (read December 2026):

us-east-1
  hosting ml.m5.large 0.115: the README's "What it costs" (on-demand, us-east-1, 2026) and a public price
    table listing "Inference Instance ml.m5.large 0.115".
  hosting ml.m5.xlarge 0.23, ml.m5.2xlarge 0.461: AWS Price List API reads quoted in public repositories,
    usage types USE1-Host:ml.m5.xlarge (read 2026-06-27) and USE1-Host:ml.m5.2xlarge (read 2026-09-28).
  training ml.g4dn.xlarge 0.736, ml.m5.large 0.115: public tables copied from the SageMaker pricing
    page ("ml.g4dn.xlarge 0.7364"; "Training Instance ml.m5.large 0.115, ml.g4dn.xlarge 0.736");
    the README quotes "about 0.74".
  transform: no batch transform price for these instance types was found: unknown.
  serverless 0.00002 per GB-second: a Price List API read quoted publicly, SKU PUE6HBQ8KFHBUN5T,
    USE1-ServerlessInf:Mem-3GB, 0.00006 per second for 3 GB (effective 2026-09-01), and a public table
    "Serverless inference: 0.0000200 per second per GB memory".
  Lambda 0.20 per million requests and 0.0000166667 per GB-second, API Gateway REST 3.50 per million
    requests: AWS's "How AWS Pricing Works" whitepaper and Lambda/API Gateway pricing summaries.
  S3 Standard 0.005 per 1,000 PUTs, 0.0004 per 1,000 GETs: S3 request-pricing summaries (2026).
  EventBridge: events from AWS services (S3 object events, SageMaker state changes) on the default bus
    are free; custom events cost 1.00 per million (EventBridge pricing summaries, us-east-1, June 2026).

eu-west-1
  From the itemised December 2023 SageMaker bill in aws-samples/sagemaker-ssh-helper (Sample_Costs.md):
  Hosting ml.m5.xlarge 0.257, ml.g4dn.xlarge 0.821 ("Endpoint"); Training ml.m5.xlarge 0.257,
  ml.g4dn.xlarge 0.822, ml.g5.xlarge 1.57; BatchTransform ml.m5.xlarge 0.257. No ml.m5.large hosting or
  transform price, no serverless and no request prices were found for eu-west-1: unknown.
"""

from __future__ import annotations

REGIONS = {
    "us-east-1": {
        "prices_of": "2026-09",
        "hosting": {"ml.m5.large": 0.115, "ml.m5.xlarge": 0.23, "ml.m5.2xlarge": 0.461},
        "training": {"ml.g4dn.xlarge": 0.736, "ml.m5.large": 0.115},
        "transform": {},
        "serverless_gb_second": 0.00002,
        "requests": {
            "lambda_request": 0.20 / 1e6,
            "lambda_gb_second": 0.0000166667,
            "api_request": 3.50 / 1e6,
            "s3_put": 0.005 / 1000,
            "s3_get": 0.0004 / 1000,
            "eventbridge_aws_event": 0.0,
        },
    },
    "eu-west-1": {
        "prices_of": "2023-12",
        "hosting": {"ml.m5.xlarge": 0.257, "ml.g4dn.xlarge": 0.821},
        "training": {"ml.m5.xlarge": 0.257, "ml.g4dn.xlarge": 0.822, "ml.g5.xlarge": 1.57},
        "transform": {"ml.m5.xlarge": 0.257},
        "serverless_gb_second": None,
        "requests": {},
    },
}
