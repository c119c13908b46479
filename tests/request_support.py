"""Fixed values the request-builder tests share (test_sagemaker_requests.py, test_sdk_oracle.py)."""

ROLE = "arn:aws:iam::123456789012:role/dogbreeds-sagemaker"
SOURCE = "s3://dogbreeds-bucket/code/sourcedir-0123456789abcdef.tar.gz"
MODEL_DATA = "s3://dogbreeds-bucket/jobs/train-dogimages-0123456789/train-dogimages-0123456789/output/model.tar.gz"
ETAG = '"9b2cf535f27731c974343645a3985328"'
