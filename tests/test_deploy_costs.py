"""deploy.costs: the running parts' monthly cost at list prices, for `dogbreeds aws deploy --plan`.

moto 5 has no pricing service, so the Price List API is a real botocore ``pricing`` client behind a
``Stubber``: it answers with GetProducts pages built per the documented shape (every ``PriceList`` entry a
JSON string) and fails on any request other than the exact ones expected. Expected figures are computed
here from the configuration's values and the prices the answers (or the shipped table) carry.
"""

import dataclasses
import json

import boto3
import botocore.session
import pytest
from botocore.exceptions import EndpointConnectionError
from botocore.stub import Stubber

from chalicelib.config import PROFILES, BatchConfig, HostingConfig, PipelineConfig, TrainingResources, TuningConfig
from chalicelib.sagemaker_requests import DLC_REGIONS
from deploy import costs, price_table
from deploy.configure import LAMBDA_MEMORY_MB

ROLE = "arn:aws:iam::123456789012:role/dogbreeds-sagemaker"
PUBLISHED = "2026-11-20T21:44:31Z"
# The prices the stubbed Price List answers with: one per product, all different, so a wrong pick shows.
HOST_M5, TRAIN_M5, TSFORM_M5, NOTEBOOK_M5, STUDIO_M5 = 0.115, 0.125, 0.135, 0.145, 0.155
HOST_G4DN, TRAIN_G4DN = 0.7364, 0.736
SERVERLESS_PER_GB_SECOND = 0.00002


def config(region="us-east-1", **parts):
    return PipelineConfig(bucket="my-dogbreeds", role_arn=ROLE, region=region, **parts)


def product(sku, usagetype, usd, *, instance=None, family="ML Instance", component=None, unit="Hrs",
            region="us-east-1", tiers=None):
    """One PriceList entry as GetProducts returns it: a JSON string of product, terms and publication."""
    attributes = {"servicecode": "AmazonSageMaker", "regionCode": region, "location": "US East (N. Virginia)",
                  "locationType": "AWS Region", "usagetype": usagetype, "operation": "RunInstance"}
    if instance:
        attributes.update(instanceName=instance, instanceType=f"{instance}-{component or 'x'}")
    if component:
        attributes["component"] = component
    term = f"{sku}.JRTCKXETXF"
    dimensions = {f"{term}.{i}": {"rateCode": f"{term}.{i}", "unit": unit, "beginRange": begin, "endRange": end,
                                  "description": f"{usagetype} {begin}-{end}",
                                  "appliesTo": [], "pricePerUnit": {"USD": f"{price:.10f}"}}
                  for i, (begin, end, price) in enumerate(tiers or [("0", "Inf", usd)])}
    return json.dumps({
        "product": {"productFamily": family, "attributes": attributes, "sku": sku},
        "serviceCode": "AmazonSageMaker",
        "terms": {"OnDemand": {term: {"offerTermCode": "JRTCKXETXF", "sku": sku, "effectiveDate": "2026-11-01T00:00:00Z",
                                      "priceDimensions": dimensions, "termAttributes": {}}}},
        "version": "20261120214431", "publicationDate": PUBLISHED,
    })


M5_PAGE_1 = [product("M5NOTEBOOK", "USE1-Notebk:ml.m5.large", NOTEBOOK_M5, instance="ml.m5.large", component="Notebook"),
             product("M5HOST", "USE1-Host:ml.m5.large", HOST_M5, instance="ml.m5.large", component="Hosting")]
M5_PAGE_2 = [product("M5TRAIN", "USE1-Train:ml.m5.large", TRAIN_M5, instance="ml.m5.large", component="Training"),
             product("M5TSFORM", "USE1-Tsform:ml.m5.large", TSFORM_M5, instance="ml.m5.large",
                     component="Batch Transform"),
             product("M5STUDIO", "USE1-Studio:KernelGateway-ml.m5.large", STUDIO_M5, instance="ml.m5.large",
                     component="studio-jupyterlab")]
G4DN_PAGE = [product("G4HOST", "USE1-Host:ml.g4dn.xlarge", HOST_G4DN, instance="ml.g4dn.xlarge", component="Hosting"),
             product("G4TRAIN", "USE1-Train:ml.g4dn.xlarge", TRAIN_G4DN, instance="ml.g4dn.xlarge",
                     component="Training")]
# Serverless: per second, a free tier below 150,000 s, one entry per memory size, and provisioned concurrency.
SERVERLESS_PAGE = [product(f"SL{gb}", f"USE1-ServerlessInf:Mem-{gb}GB", 0, family="ML Serverless", unit="Second",
                           tiers=[("0", "150000", 0.0), ("150000", "Inf", SERVERLESS_PER_GB_SECOND * gb)])
                   for gb in range(1, 7)] + \
                  [product("PC3", "USE1-ProvisionedConcurrency:Mem-3GB", 0.0000126, family="ML Serverless",
                           unit="Second")]


def instance_request(instance_type, token=None, region="us-east-1"):
    request = {"ServiceCode": "AmazonSageMaker", "FormatVersion": "aws_v1", "MaxResults": 100,
               "Filters": [{"Type": "TERM_MATCH", "Field": "regionCode", "Value": region},
                           {"Type": "TERM_MATCH", "Field": "instanceName", "Value": instance_type}]}
    return {**request, "NextToken": token} if token else request


def serverless_request(region="us-east-1"):
    return {"ServiceCode": "AmazonSageMaker", "FormatVersion": "aws_v1", "MaxResults": 100,
            "Filters": [{"Type": "TERM_MATCH", "Field": "regionCode", "Value": region},
                        {"Type": "TERM_MATCH", "Field": "productFamily", "Value": "ML Serverless"}]}


def page(entries, token=None):
    answer = {"FormatVersion": "aws_v1", "PriceList": list(entries)}
    return {**answer, "NextToken": token} if token else answer


class OneClientSession:
    """A boto3 Session stand-in that hands out one prepared client and records what was asked for."""

    def __init__(self, client):
        self._client = client
        self.asked = []

    def client(self, service_name, region_name=None, config=None):
        self.asked.append((service_name, region_name))
        return self._client


@pytest.fixture
def pricing():
    """A real pricing client behind a Stubber; yields (client, stubber, operations called)."""
    client = botocore.session.get_session().create_client(
        "pricing", region_name="us-east-1", aws_access_key_id="AKIDEXAMPLE", aws_secret_access_key="secret")
    operations = []
    client.meta.events.register("provide-client-params.pricing.*",
                                lambda model, **_: operations.append(model.name))
    with Stubber(client) as stubber:
        yield client, stubber, operations
        stubber.assert_no_pending_responses()


def line_of(report, start):
    """The one line of ``report`` that begins with ``start`` (after its indent)."""
    found = [line for line in report.lines if line.strip().startswith(start)]
    assert len(found) == 1, (start, report.lines)
    return found[0]


def test_prices_come_from_the_price_list_with_exactly_the_read_only_requests_expected(pricing):
    client, stubber, operations = pricing
    stubber.add_response("get_products", page(M5_PAGE_1, token="page-2"), instance_request("ml.m5.large"))
    stubber.add_response("get_products", page(M5_PAGE_2), instance_request("ml.m5.large", token="page-2"))
    stubber.add_response("get_products", page(G4DN_PAGE), instance_request("ml.g4dn.xlarge"))
    session = OneClientSession(client)
    cfg = config()

    report = costs.cost_report(cfg, "us-east-1", session=session)

    assert session.asked == [("pricing", "us-east-1")]
    assert operations == ["GetProducts"] * 3               # nothing else, nothing mutating
    assert (report.source, report.fallback_reason) == ("AWS Price List API, 2026-11-20", None)
    assert report.lines[1] == "  prices: AWS Price List API, 2026-11-20"
    runtime_hours = cfg.training_resources.max_runtime_seconds / 3600
    assert report.endpoint_monthly == pytest.approx(HOST_M5 * 730 * cfg.hosting.instance_count)
    assert report.tuning_worst_case == pytest.approx(
        cfg.tuning.max_training_jobs * runtime_hours * cfg.training_resources.instance_count * TRAIN_G4DN)
    assert report.training_worst_case == pytest.approx(runtime_hours * cfg.training_resources.instance_count * TRAIN_G4DN)
    assert report.transform_instance_hour == pytest.approx(TSFORM_M5 * cfg.batch.instance_count)
    assert (report.serverless_per_request, report.serverless_gb_second) == (None, None)
    assert f"= {costs.usd(report.endpoint_monthly)} a month" in line_of(report, "endpoint, 1 x ml.m5.large running 24/7")
    assert f"= {costs.usd(report.tuning_worst_case)} a run" in line_of(report, "tuning run, worst case")
    assert costs.usd(report.transform_instance_hour) in line_of(report, "batch transform, 1 x ml.m5.large")
    assert not any("unknown" in line for line in report.lines)


def test_a_serverless_endpoint_is_priced_per_request_at_its_memory_size_and_an_assumed_duration(pricing):
    client, stubber, _ = pricing
    stubber.add_response("get_products", page(G4DN_PAGE), instance_request("ml.g4dn.xlarge"))
    stubber.add_response("get_products", page(M5_PAGE_1 + M5_PAGE_2), instance_request("ml.m5.large"))
    stubber.add_response("get_products", page(SERVERLESS_PAGE), serverless_request())
    cfg = config(hosting=HostingConfig(serverless=True, serverless_memory_mb=4096, serverless_max_concurrency=8))

    report = costs.cost_report(cfg, "us-east-1", session=OneClientSession(client))

    memory_gb = cfg.hosting.serverless_memory_mb / 1024
    per_second = SERVERLESS_PER_GB_SECOND * memory_gb        # the open-ended tier of Mem-4GB, not the free tier
    assert report.fallback_reason is None
    assert report.endpoint_monthly is None
    assert report.serverless_per_request == pytest.approx(per_second * costs.ASSUMED_SERVERLESS_SECONDS)
    assert report.serverless_gb_second == pytest.approx(SERVERLESS_PER_GB_SECOND)
    line = line_of(report, "endpoint, serverless, 4096 MB, at most 8 at once")
    assert f"{costs.usd(SERVERLESS_PER_GB_SECOND)} per GB-s x 4 GB x {costs.ASSUMED_SERVERLESS_SECONDS:g} s" in line
    assert "assumed" in line and "nothing while idle" in line
    assert f"= {costs.usd(report.serverless_per_request)} a request" in line


def test_the_table_prices_a_serverless_endpoint_from_its_per_gb_second_rate():
    cfg = config(hosting=HostingConfig(serverless=True, serverless_memory_mb=2048))
    parts = costs.running_parts(cfg)
    table = price_table.REGIONS["us-east-1"]
    report = costs.build_report(parts, costs.table_prices(parts, "us-east-1"),
                                costs.table_request_prices("us-east-1"), "us-east-1")
    assert report.serverless_gb_second == pytest.approx(table["serverless_gb_second"])
    assert report.serverless_per_request == pytest.approx(
        table["serverless_gb_second"] * cfg.hosting.serverless_memory_mb / 1024 * costs.ASSUMED_SERVERLESS_SECONDS)


def failing_client(exc):
    class Client:
        def get_products(self, **request):
            raise exc
    return Client()


@pytest.mark.parametrize("answer, reason", [
    (("client_error", ("AccessDeniedException", "User is not authorized to perform: pricing:GetProducts")),
     "AccessDeniedException"),
    (("client_error", ("ThrottlingException", "Rate exceeded")), "ThrottlingException"),
    (("pages", []), "no entry for hosting ml.m5.large in us-east-1"),
    (("pages", ["{not json"]), "not JSON"),
    (("pages", [M5_PAGE_1[1], product("M5HOST2", "USE1-Host:ml.m5.large", 0.2, instance="ml.m5.large")]),
     "2 different prices for hosting ml.m5.large"),
    (("pages", [product("M5HOST", "USE1-Host:ml.m5.large", 0.115, instance="ml.m5.large", unit="Hrs",
                        tiers=[("0", "750", 0.0), ("750", "1000", 0.1)])]),
     "0 open-ended on-demand prices"),
])
def test_any_price_list_failure_falls_back_to_the_table_with_the_reason_in_one_line(pricing, answer, reason):
    client, stubber, operations = pricing
    kind, detail = answer
    if kind == "client_error":
        code, message = detail
        stubber.add_client_error("get_products", service_error_code=code, service_message=message,
                                 http_status_code=400, expected_params=instance_request("ml.m5.large"))
    else:
        stubber.add_response("get_products", page(detail), instance_request("ml.m5.large"))
    cfg = config()

    report = costs.cost_report(cfg, "us-east-1", session=OneClientSession(client))

    assert operations == ["GetProducts"]                    # the first failure ends the Price List's part
    assert report.source == f"table shipped with the code, prices of {price_table.REGIONS['us-east-1']['prices_of']}"
    assert reason in report.fallback_reason and "\n" not in report.fallback_reason
    assert [line for line in report.lines if reason in line] == \
        [f"  the Price List API was not used: {report.fallback_reason}"]
    table = price_table.REGIONS["us-east-1"]
    assert report.endpoint_monthly == pytest.approx(table["hosting"]["ml.m5.large"] * 730 * cfg.hosting.instance_count)
    assert report.training_worst_case == pytest.approx(
        cfg.training_resources.max_runtime_seconds / 3600 * table["training"]["ml.g4dn.xlarge"])


@pytest.mark.parametrize("error", [EndpointConnectionError(endpoint_url="https://api.pricing.us-east-1.amazonaws.com/")])
def test_an_unreachable_price_list_falls_back_to_the_table(error):
    report = costs.cost_report(config(), "us-east-1", session=OneClientSession(failing_client(error)))
    assert report.source.startswith("table shipped with the code")
    assert "Could not connect to the endpoint URL" in report.fallback_reason


def test_without_credentials_the_table_is_used_and_nothing_is_sent(monkeypatch, tmp_path):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                 "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                 "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")      # no instance-metadata lookup either

    report = costs.cost_report(config(), "us-east-1", session=boto3.Session())

    assert report.fallback_reason == "Unable to locate credentials"
    assert report.source.startswith("table shipped with the code")


def test_the_arithmetic_follows_the_configuration():
    cfg = config(hosting=HostingConfig(instance_count=3),
                 tuning=TuningConfig(strategy="Grid", max_parallel_training_jobs=2),
                 training_resources=TrainingResources(max_runtime_seconds=5400, use_spot=True, spot_max_wait_seconds=7200),
                 batch=BatchConfig(instance_count=2))
    table = price_table.REGIONS["us-east-1"]
    parts = costs.running_parts(cfg)
    report = costs.build_report(parts, costs.table_prices(parts, "us-east-1"),
                                costs.table_request_prices("us-east-1"), "us-east-1")

    assert parts.tuning_jobs == cfg.tuning.grid_size          # Grid runs its whole grid, not max_training_jobs
    assert report.endpoint_monthly == pytest.approx(table["hosting"]["ml.m5.large"] * costs.HOURS_PER_MONTH * 3)
    hours = cfg.training_resources.max_runtime_seconds / 3600
    assert report.tuning_worst_case == pytest.approx(cfg.tuning.grid_size * hours * table["training"]["ml.g4dn.xlarge"])
    assert report.training_worst_case == pytest.approx(hours * table["training"]["ml.g4dn.xlarge"])
    assert f"{cfg.tuning.grid_size} jobs each stopped at its max runtime of 1.5 h" in line_of(report, "tuning run")
    assert "spot training bills less" in line_of(report, "tuning run")
    assert "x 730 h x 3 =" in line_of(report, "endpoint, 3 x ml.m5.large running 24/7")
    requests = table["requests"]
    lambda_call = requests["lambda_request"] + requests["lambda_gb_second"] * LAMBDA_MEMORY_MB / 1024 * \
        costs.ASSUMED_LAMBDA_SECONDS
    assert report.predict_request == pytest.approx(requests["api_request"] + lambda_call)
    assert report.event_request == pytest.approx(lambda_call)
    assert "S3 requests: 0.005 per 1,000 uploads, 0.0004 per 1,000 reads" in line_of(report, "S3 requests")


# Which table prices each supported region has for what the profiles run (ml.m5.large endpoint and batch
# transform, ml.g4dn.xlarge training, the per-request services). Every other region prints "unknown" for all.
TABLE_COVERAGE = {
    "us-east-1": {"endpoint", "tuning run", "instrumented training run", "per request"},
    "eu-west-1": {"tuning run", "instrumented training run"},
}
LINE_OF_FIGURE = {"endpoint": "endpoint_monthly", "tuning run": "tuning_worst_case",
                  "instrumented training run": "training_worst_case", "batch transform": "transform_instance_hour",
                  "per request": "predict_request"}


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_every_supported_region_has_table_prices_for_the_profiles_or_says_unknown(profile):
    assert set(TABLE_COVERAGE) <= DLC_REGIONS and set(price_table.REGIONS) == set(TABLE_COVERAGE)
    for region in sorted(DLC_REGIONS):
        cfg = PipelineConfig.from_profile(profile, "my-dogbreeds", ROLE, region)
        parts = costs.running_parts(cfg)
        report = costs.build_report(parts, costs.table_prices(parts, region), costs.table_request_prices(region), region)
        priced = {line for line, figure in LINE_OF_FIGURE.items() if getattr(report, figure) is not None}
        assert priced == TABLE_COVERAGE.get(region, set()), region
        for start, figure in LINE_OF_FIGURE.items():
            text = [line for line in report.lines if line.strip().startswith(start)
                    or (start == "per request" and line.strip().startswith("Lambda, API Gateway"))]
            assert len(text) == 1, (region, start, report.lines)
            if start in priced:
                assert "unknown" not in text[0] and costs.usd(getattr(report, figure)) in text[0]
            else:
                assert "unknown" in text[0], (region, text[0])


def test_money_is_printed_without_exponents():
    assert [costs.usd(x) for x in (83.95, 1234.5, 0.115, 0.7364, 0.00006, 0.0000120333, 0)] == \
        ["83.95", "1,234.50", "0.115", "0.7364", "0.00006", "0.00001203", "0"]


def test_a_configuration_the_table_cannot_price_says_which_price_is_missing():
    cfg = dataclasses.replace(config("eu-west-1"), batch=BatchConfig(instance_type="ml.c5.xlarge"))
    parts = costs.running_parts(cfg)
    report = costs.build_report(parts, costs.table_prices(parts, "eu-west-1"), costs.table_request_prices("eu-west-1"),
                                "eu-west-1")
    assert "unknown (no price for batch transform ml.c5.xlarge in eu-west-1" in line_of(report, "batch transform")
    assert "unknown (no price for hosting ml.m5.large in eu-west-1" in line_of(report, "endpoint")
    assert report.lines[1] == f"  prices: table shipped with the code, prices of {price_table.REGIONS['eu-west-1']['prices_of']}"
