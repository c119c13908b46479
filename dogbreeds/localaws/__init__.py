"""Local stand-ins for the AWS services the control plane calls, with boto3's request and response shapes."""
