"""Every route and every API Gateway method requires SigV4 (IAM) authentication."""

from __future__ import annotations

import pytest
from aws_support import REGION
from chalice import IAMAuthorizer

from chalice_app import app as chalice_app


EXPECTED_ROUTES = {("/predict", "POST"), ("/status", "GET"), ("/batch", "POST"), ("/batch/{batch_id}", "GET"),
                   ("/models/{model}/serve", "POST")}


def test_every_route_requires_iam_authorisation():
    routes = {(path, method): entry for path, methods in chalice_app.app.routes.items()
              for method, entry in methods.items()}
    assert set(routes) == EXPECTED_ROUTES
    for (path, method), entry in routes.items():
        assert isinstance(entry.authorizer, IAMAuthorizer), (path, method)
        assert entry.cors is None, (path, method)     # CORS would add an unauthenticated OPTIONS method


@pytest.mark.parametrize("generator", ["SwaggerGenerator", "TerraformSwaggerGenerator", "CFNSwaggerGenerator"])
def test_the_api_gateway_definition_puts_sigv4_on_every_method(generator):
    from chalice.deploy import swagger
    if generator == "SwaggerGenerator":
        arn = f"arn:aws:lambda:{REGION}:123456789012:function:dogbreeds-dev"
        maker = swagger.SwaggerGenerator(REGION, {"api_handler_arn": arn, "api_handler_name": "dogbreeds-dev"})
    else:
        maker = getattr(swagger, generator)()
    api = maker.generate_swagger(chalice_app.app)
    methods = {(path, method.upper()): spec for path, item in api["paths"].items() for method, spec in item.items()}
    assert set(methods) == EXPECTED_ROUTES
    for key, spec in methods.items():
        assert spec["security"] == [{"sigv4": []}], key
        assert spec["x-amazon-apigateway-integration"]["type"] == "aws_proxy", key
    assert api["securityDefinitions"] == {"sigv4": {"in": "header", "type": "apiKey", "name": "Authorization",
                                                    "x-amazon-apigateway-authtype": "awsSigv4"}}
    # image bodies must reach Lambda as bytes, or every JPEG would be mangled as text
    assert {"image/jpeg", "image/png", "application/x-image", "application/octet-stream"} <= \
        set(api["x-amazon-apigateway-binary-media-types"])
