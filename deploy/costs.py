"""What a deployment's running parts cost per month at list prices: the cost lines of ``dogbreeds aws deploy --plan``.

    report = cost_report(PipelineConfig.from_env(env), "eu-west-1")
    print("\\n".join(report.lines))

What is priced is read from the requests the control plane would send (``chalicelib.sagemaker_requests``):
the endpoint's variant (instances running 24/7, or serverless memory), the tuning job's training jobs
and their instance and stopping condition, the instrumented run, the batch transform's instances. So the
plan prices exactly what would run, for any configuration.

Prices come from the AWS Price List API when it answers, else from the dated table in
``deploy.price_table``; a line says which, and why the API was not used. The API is all or nothing: any
failure (no credentials, AccessDenied, throttling, no or ambiguous entry, an answer we cannot read) falls
back to the table for every SageMaker price, so one report never mixes two sources. A price neither
source has prints as "unknown", never as a guess. Only ``pricing:GetProducts`` is called: nothing is
created or changed. Lambda, API Gateway, S3 and EventBridge prices always come from the table (they are
per request and small next to the instances).

How the Price List is read (attribute names relied on, from public sources, December 2026):

- ServiceCode ``AmazonSageMaker``; the Price List API's endpoint is in us-east-1. Every entry of
  ``PriceList`` is a JSON string ``{"product": {"productFamily", "attributes": {...}}, "terms":
  {"OnDemand": {<term>: {"priceDimensions": {<rate>: {"unit", "beginRange", "endRange",
  "pricePerUnit": {"USD": "0.1150000000"}}}}}}, "publicationDate": ...}``.
- Instance prices: ``TERM_MATCH`` filters on ``regionCode`` and ``instanceName`` (AWS's own llmeter
  filters SageMaker hosting this way, with ``component`` ``Hosting``). One request per instance type
  returns every component of it (notebooks, Studio apps, processing, hosting, training, transform ...);
  the entry is chosen by its ``usagetype``, ``<region prefix>-Host:<type>``, ``-Train:<type>`` or
  ``-Tsform:<type>`` (the names on SageMaker bills and in Cost Explorer, e.g. ``USE1-Host:ml.m5.large``,
  ``USE1-Tsform:ml.c5.9xlarge``). The ``component`` value is documented publicly only for ``Hosting``,
  so the usage type, which names all three, decides.
- Serverless: ``productFamily`` ``ML Serverless``, usage type ``<prefix>-ServerlessInf:Mem-<N>GB``, price
  per second for one of the six memory sizes (Infracost prices serverless endpoints by these).
- A price dimension's open-ended tier (``endRange`` ``Inf``) is the list price; lower tiers are free-tier
  allowances (serverless has 150,000 free seconds a month at first).

moto 5 does not implement the pricing service: the tests answer with botocore's Stubber.
"""

from __future__ import annotations

import datetime
import json
import re
from dataclasses import dataclass
from typing import Iterable, List, Mapping, Optional, Sequence, Tuple

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from chalicelib import sagemaker_requests
from chalicelib.config import PipelineConfig
from deploy import price_table
from deploy.configure import LAMBDA_MEMORY_MB

HOURS_PER_MONTH = 730            # AWS's own monthly figure: 24 h x 365 days / 12
PRICING_ENDPOINT_REGION = "us-east-1"
SERVICE_CODE = "AmazonSageMaker"
SERVERLESS_FAMILY = "ML Serverless"
# A serverless request bills its processing time: one ResNet-18/34 forward pass on CPU at 224 px takes a
# fraction of a second; a second per request keeps the estimate on the high side.
ASSUMED_SERVERLESS_SECONDS = 1.0
# The /predict Lambda waits for the endpoint's answer, so it runs about as long as one inference.
ASSUMED_LAMBDA_SECONDS = 1.0
MAX_PRICE_LIST_PAGES = 10        # an instance type has a few dozen entries: more pages means a wrong filter
# What each kind of SageMaker usage is called in a usage type (``USE1-Host:ml.m5.large``).
USAGE = {"hosting": "Host", "training": "Train", "transform": "Tsform"}
_SERVERLESS_USAGE = re.compile(r"(?:^|-)ServerlessInf:Mem-(\d+)GB$")
# The dataset, marker and model the plan's requests are built for: only their resources are read.
_PLAN = "plan"


class PriceListError(Exception):
    """The Price List API answered, but not with one readable on-demand price for what was asked."""


@dataclass(frozen=True)
class RunningParts:
    """What a configuration runs and is billed for, as the control plane's requests say."""
    endpoint_instance_type: Optional[str]      # None: serverless
    endpoint_instance_count: int
    serverless_memory_mb: Optional[int]        # None: instances
    serverless_max_concurrency: Optional[int]
    tuning_jobs: int                           # the tuning job's MaxNumberOfTrainingJobs
    training_instance_type: str                # tuning trials and the instrumented run alike
    training_instance_count: int
    max_runtime_seconds: int                   # StoppingCondition.MaxRuntimeInSeconds of every training job
    spot: bool
    transform_instance_type: str
    transform_instance_count: int

    @property
    def instance_types(self) -> Tuple[str, ...]:
        """Every instance type with an hourly price to look up, each once, in a fixed order."""
        types = (self.endpoint_instance_type, self.training_instance_type, self.transform_instance_type)
        return tuple(dict.fromkeys(t for t in types if t))


def running_parts(config: PipelineConfig) -> RunningParts:
    """The billed parts of ``config``, read from the requests the control plane would send for it."""
    source_uri = sagemaker_requests.source_package_uri(config, "0" * 16)
    tuning = sagemaker_requests.create_hyper_parameter_tuning_job(config, _PLAN, _PLAN, source_uri)
    definition = tuning["TrainingJobDefinition"]
    best = {name: "0" for name in config.tuning.tuned_names}       # any values: only resources are read
    final = sagemaker_requests.create_training_job(config, _PLAN, _PLAN, source_uri, best)
    if (final["ResourceConfig"], final["StoppingCondition"]) != (definition["ResourceConfig"],
                                                                 definition["StoppingCondition"]):
        raise ValueError("the instrumented run and the tuning trials no longer share resources: price them apart")
    variant = sagemaker_requests.create_endpoint_config(config, _PLAN, _PLAN)["ProductionVariants"][0]
    serverless = variant.get("ServerlessConfig")
    transform = sagemaker_requests.create_transform_job(config, _PLAN, _PLAN, _PLAN)["TransformResources"]
    return RunningParts(
        endpoint_instance_type=None if serverless else variant["InstanceType"],
        endpoint_instance_count=0 if serverless else variant["InitialInstanceCount"],
        serverless_memory_mb=serverless["MemorySizeInMB"] if serverless else None,
        serverless_max_concurrency=serverless["MaxConcurrency"] if serverless else None,
        tuning_jobs=tuning["HyperParameterTuningJobConfig"]["ResourceLimits"]["MaxNumberOfTrainingJobs"],
        training_instance_type=definition["ResourceConfig"]["InstanceType"],
        training_instance_count=definition["ResourceConfig"]["InstanceCount"],
        max_runtime_seconds=definition["StoppingCondition"]["MaxRuntimeInSeconds"],
        spot=bool(definition.get("EnableManagedSpotTraining")),
        transform_instance_type=transform["InstanceType"],
        transform_instance_count=transform["InstanceCount"],
    )


@dataclass(frozen=True)
class Prices:
    """USD list prices of one region for the parts of one configuration; None where unknown."""
    source: str
    hosting_hour: Optional[float]
    training_hour: Optional[float]
    transform_hour: Optional[float]
    serverless_second: Optional[float]         # at the endpoint's memory size


@dataclass(frozen=True)
class RequestPrices:
    """USD per request (per GB-second for Lambda's duration) of the services around SageMaker."""
    lambda_request: Optional[float] = None
    lambda_gb_second: Optional[float] = None
    api_request: Optional[float] = None
    s3_put: Optional[float] = None
    s3_get: Optional[float] = None
    eventbridge_aws_event: Optional[float] = None


# --- the table ----------------------------------------------------------------------------------

def table_source(region: str) -> str:
    """``table shipped with the code, prices of 2026-09`` (or that it has no prices for ``region``)."""
    known = price_table.REGIONS.get(region)
    if known is None:
        return f"table shipped with the code, which has no prices for {region}"
    return f"table shipped with the code, prices of {known['prices_of']}"


def table_prices(parts: RunningParts, region: str) -> Prices:
    """The table's prices for ``parts`` in ``region`` (None for every price it lacks)."""
    known = price_table.REGIONS.get(region, {})
    serverless = None
    if parts.serverless_memory_mb and known.get("serverless_gb_second") is not None:
        serverless = known["serverless_gb_second"] * parts.serverless_memory_mb / 1024
    return Prices(
        source=table_source(region),
        hosting_hour=known.get("hosting", {}).get(parts.endpoint_instance_type),
        training_hour=known.get("training", {}).get(parts.training_instance_type),
        transform_hour=known.get("transform", {}).get(parts.transform_instance_type),
        serverless_second=serverless,
    )


def table_request_prices(region: str) -> RequestPrices:
    """Lambda, API Gateway, S3 and EventBridge prices of ``region`` from the table (None where unknown)."""
    return RequestPrices(**price_table.REGIONS.get(region, {}).get("requests", {}))


# --- the Price List API: requests and answers (pure) ---------------------------------------------

def _filters(**fields: str) -> List[dict]:
    return [{"Type": "TERM_MATCH", "Field": name, "Value": value} for name, value in fields.items()]


def instance_products_request(region: str, instance_type: str, next_token: Optional[str] = None) -> dict:
    """GetProducts request for every SageMaker product of ``instance_type`` in ``region``."""
    request = {"ServiceCode": SERVICE_CODE, "FormatVersion": "aws_v1", "MaxResults": 100,
               "Filters": _filters(regionCode=region, instanceName=instance_type)}
    if next_token:
        request["NextToken"] = next_token
    return request


def serverless_products_request(region: str, next_token: Optional[str] = None) -> dict:
    """GetProducts request for the serverless inference products of ``region``."""
    request = {"ServiceCode": SERVICE_CODE, "FormatVersion": "aws_v1", "MaxResults": 100,
               "Filters": _filters(regionCode=region, productFamily=SERVERLESS_FAMILY)}
    if next_token:
        request["NextToken"] = next_token
    return request


def parse_price_list(entries: Iterable[str]) -> List[dict]:
    """The ``PriceList`` strings of GetProducts answers as dicts; PriceListError for one that is not JSON."""
    products = []
    for entry in entries:
        try:
            product = json.loads(entry)
        except (TypeError, ValueError) as exc:
            raise PriceListError(f"a Price List entry is not JSON ({exc})") from None
        if not isinstance(product, dict):
            raise PriceListError("a Price List entry is not a JSON object")
        products.append(product)
    return products


def on_demand_usd(product: dict) -> float:
    """The on-demand list price of one Price List product in USD per its unit: the open-ended tier.

    PriceListError when the product has no on-demand term, or not exactly one open-ended USD dimension.
    """
    terms = (product.get("terms") or {}).get("OnDemand") or {}
    dimensions = [dimension for term in terms.values() for dimension in (term.get("priceDimensions") or {}).values()]
    open_ended = [d for d in dimensions if str(d.get("endRange", "Inf")) == "Inf"]
    sku = (product.get("product") or {}).get("sku", "?")
    if len(open_ended) != 1:
        raise PriceListError(f"product {sku} has {len(open_ended)} open-ended on-demand prices, not one")
    try:
        return float(open_ended[0]["pricePerUnit"]["USD"])
    except (KeyError, TypeError, ValueError):
        raise PriceListError(f"product {sku} has no USD price") from None


def _attributes(product: dict) -> Mapping[str, str]:
    return (product.get("product") or {}).get("attributes") or {}


def _one_price(matches: Sequence[dict], what: str) -> float:
    prices = sorted({on_demand_usd(product) for product in matches})
    if not prices:
        raise PriceListError(f"the Price List has no entry for {what}")
    if len(prices) > 1:
        raise PriceListError(f"the Price List has {len(prices)} different prices for {what}")
    return prices[0]


def instance_hour_price(products: Sequence[dict], use: str, instance_type: str, region: str) -> float:
    """USD per instance-hour of ``instance_type`` for ``use`` (hosting, training or transform), chosen among
    ``products`` by usage type (``...-Host:ml.m5.large``); PriceListError when none or several prices match."""
    usage = re.compile(rf"(?:^|-){USAGE[use]}:{re.escape(instance_type)}$")
    matches = [p for p in products if usage.search(str(_attributes(p).get("usagetype", "")))]
    return _one_price(matches, f"{use} {instance_type} in {region}")


def serverless_second_price(products: Sequence[dict], memory_mb: int, region: str) -> float:
    """USD per second of a serverless endpoint with ``memory_mb`` of memory, chosen by usage type
    (``...-ServerlessInf:Mem-3GB``); PriceListError when none or several prices match."""
    wanted = memory_mb // 1024
    matches = [p for p in products
               if (m := _SERVERLESS_USAGE.search(str(_attributes(p).get("usagetype", "")))) and int(m.group(1)) == wanted]
    return _one_price(matches, f"serverless inference with {wanted} GB in {region}")


def publication_date(products: Sequence[dict]) -> Optional[str]:
    """The newest ``publicationDate`` of ``products`` as YYYY-MM-DD, or None when they carry none."""
    dates = [str(p["publicationDate"])[:10] for p in products if p.get("publicationDate")]
    return max(dates) if dates else None


# --- the Price List API: the calls (the only I/O) -----------------------------------------------

def _fetch(client, request_for) -> List[dict]:
    """Every product of a paginated GetProducts query; ``request_for(next_token)`` builds each page's request."""
    products, token = [], None
    for _ in range(MAX_PRICE_LIST_PAGES):
        answer = client.get_products(**request_for(token))
        products.extend(parse_price_list(answer.get("PriceList", [])))
        token = answer.get("NextToken")
        if not token:
            return products
    raise PriceListError(f"more than {MAX_PRICE_LIST_PAGES} pages of Price List entries for one query")


def price_list_prices(parts: RunningParts, region: str, client) -> Prices:
    """Every SageMaker price ``parts`` needs in ``region``, from the Price List API through ``client`` (a
    boto3 ``pricing`` client). Raises PriceListError, or botocore's errors, at the first price missing."""
    uses = {"hosting": parts.endpoint_instance_type, "training": parts.training_instance_type,
            "transform": parts.transform_instance_type}
    fetched, hourly, serverless = [], {}, None
    for instance_type in parts.instance_types:
        products = _fetch(client, lambda token, t=instance_type: instance_products_request(region, t, token))
        fetched.extend(products)
        for use in (use for use, wanted in uses.items() if wanted == instance_type):
            hourly[use] = instance_hour_price(products, use, instance_type, region)
    if parts.serverless_memory_mb:
        products = _fetch(client, lambda token: serverless_products_request(region, token))
        fetched.extend(products)
        serverless = serverless_second_price(products, parts.serverless_memory_mb, region)
    date = publication_date(fetched) or datetime.date.today().isoformat()
    return Prices(source=f"AWS Price List API, {date}", hosting_hour=hourly.get("hosting"),
                  training_hour=hourly.get("training"), transform_hour=hourly.get("transform"),
                  serverless_second=serverless)


def _pricing_client(session):
    session = session or boto3.Session()
    # A plan should not hang on a network that does not answer: short timeouts, one retry.
    return session.client("pricing", region_name=PRICING_ENDPOINT_REGION,
                          config=Config(connect_timeout=5, read_timeout=15,
                                        retries={"max_attempts": 2, "mode": "standard"}))


def _one_line(exc: BaseException) -> str:
    """``exc`` as one line of at most 200 characters (botocore's messages name the error code)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


# --- the report ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class CostReport:
    """The cost lines of a plan and the figures behind them (USD; None where a price is unknown or the
    part does not run, e.g. ``endpoint_monthly`` of a serverless endpoint)."""
    region: str
    source: str                                # "AWS Price List API, <date>" or "table shipped with the code, ..."
    fallback_reason: Optional[str]             # why the Price List API was not used; None when it was
    endpoint_monthly: Optional[float]          # instances running 24/7: hourly x 730 h x count
    serverless_per_request: Optional[float]    # at ASSUMED_SERVERLESS_SECONDS
    serverless_gb_second: Optional[float]
    tuning_worst_case: Optional[float]         # every trial running to its max runtime
    training_worst_case: Optional[float]       # the instrumented run likewise
    transform_instance_hour: Optional[float]   # every instance of one transform job, per hour it runs
    predict_request: Optional[float]           # API Gateway + Lambda around one /predict call
    event_request: Optional[float]             # the Lambda call of one pipeline event (S3, SageMaker)
    lines: List[str]


def usd(amount: float) -> str:
    """``83.95``, ``0.115``, ``0.00006``: two decimals from 1 up, else up to four significant digits."""
    if amount >= 1:
        return f"{amount:,.2f}"
    if amount == 0:
        return "0"
    digits = max(2, 3 - int(f"{amount:e}".split("e")[1]))
    return f"{amount:.{digits}f}".rstrip("0").rstrip(".")


def _times(*factors: Optional[float]) -> Optional[float]:
    product = 1.0
    for factor in factors:
        if factor is None:
            return None
        product *= factor
    return product


def _unknown(what: str, region: str) -> str:
    return f"unknown (no price for {what} in {region}: see deploy/price_table.py or the Price List)"


def figures(parts: RunningParts, prices: Prices, requests: RequestPrices) -> dict:
    """The report's USD figures (CostReport's field names), each None where a price is unknown."""
    memory_gb = (parts.serverless_memory_mb or 0) / 1024
    runtime_h = parts.max_runtime_seconds / 3600
    duration = _times(requests.lambda_gb_second, LAMBDA_MEMORY_MB / 1024, ASSUMED_LAMBDA_SECONDS)
    lambda_call = None if duration is None or requests.lambda_request is None else duration + requests.lambda_request
    return {
        "endpoint_monthly": _times(prices.hosting_hour, HOURS_PER_MONTH, parts.endpoint_instance_count)
        if parts.endpoint_instance_type else None,
        "serverless_per_request": _times(prices.serverless_second, ASSUMED_SERVERLESS_SECONDS) if memory_gb else None,
        "serverless_gb_second": _times(prices.serverless_second, 1 / memory_gb) if memory_gb else None,
        "tuning_worst_case": _times(parts.tuning_jobs, runtime_h, parts.training_instance_count, prices.training_hour),
        "training_worst_case": _times(runtime_h, parts.training_instance_count, prices.training_hour),
        "transform_instance_hour": _times(prices.transform_hour, parts.transform_instance_count),
        "event_request": lambda_call,
        "predict_request": None if lambda_call is None or requests.api_request is None
        else requests.api_request + lambda_call,
    }


def _endpoint_line(parts: RunningParts, prices: Prices, figure: dict, region: str) -> str:
    if parts.endpoint_instance_type:
        monthly = figure["endpoint_monthly"]
        cost = (_unknown(f"hosting {parts.endpoint_instance_type}", region) if monthly is None else
                f"{usd(prices.hosting_hour)}/h x {HOURS_PER_MONTH} h x {parts.endpoint_instance_count} = "
                f"{usd(monthly)} a month")
        return f"  endpoint, {parts.endpoint_instance_count} x {parts.endpoint_instance_type} running 24/7: {cost}"
    memory_gb = parts.serverless_memory_mb / 1024
    request = figure["serverless_per_request"]
    cost = (_unknown(f"serverless inference with {memory_gb:g} GB", region) if request is None else
            f"{usd(figure['serverless_gb_second'])} per GB-s x {memory_gb:g} GB x {ASSUMED_SERVERLESS_SECONDS:g} s "
            f"(assumed time per request) = {usd(request)} a request, {usd(request * 1000)} per 1,000; "
            f"nothing while idle")
    return (f"  endpoint, serverless, {parts.serverless_memory_mb} MB, at most {parts.serverless_max_concurrency} "
            f"at once: {cost}")


def _training_lines(parts: RunningParts, prices: Prices, figure: dict, region: str) -> List[str]:
    hours = f"{parts.max_runtime_seconds / 3600:g} h"
    instances = f"{parts.training_instance_count} x {parts.training_instance_type}"
    price = f"{parts.training_instance_count} x {usd(prices.training_hour or 0)}/h"
    spot = "; spot training bills less" if parts.spot else ""

    def cost(amount, jobs):
        if amount is None:
            return _unknown(f"training {parts.training_instance_type}", region)
        return f"{jobs}{hours} x {price} = {usd(amount)} a run{spot}"

    return [f"  tuning run, worst case ({parts.tuning_jobs} jobs each stopped at its max runtime of {hours}, "
            f"{instances}): {cost(figure['tuning_worst_case'], f'{parts.tuning_jobs} x ')}",
            f"  instrumented training run, worst case (1 job, {hours}, {instances}): "
            f"{cost(figure['training_worst_case'], '')}"]


def _transform_line(parts: RunningParts, figure: dict, region: str) -> str:
    hourly = figure["transform_instance_hour"]
    cost = (_unknown(f"batch transform {parts.transform_instance_type}", region) if hourly is None else
            f"{usd(hourly)} per hour a job runs, nothing between jobs")
    return f"  batch transform, {parts.transform_instance_count} x {parts.transform_instance_type}: {cost}"


def _request_lines(requests: RequestPrices, figure: dict, region: str) -> List[str]:
    predict, lambda_call = figure["predict_request"], figure["event_request"]
    if predict is None:
        return [f"  Lambda, API Gateway, S3, EventBridge (per request, small next to the above): unknown "
                f"(no request prices for {region} in deploy/price_table.py)"]
    s3 = ("unknown" if requests.s3_put is None or requests.s3_get is None else
          f"{usd(requests.s3_put * 1000)} per 1,000 uploads, {usd(requests.s3_get * 1000)} per 1,000 reads")
    events = ("unknown" if requests.eventbridge_aws_event is None else
              "free (S3 and SageMaker events on the default bus)" if requests.eventbridge_aws_event == 0 else
              f"{usd(requests.eventbridge_aws_event * 1e6)} per million events")
    return [f"  per request, small next to the above ({table_source(region)}): a /predict call {usd(predict)} "
            f"(API Gateway {usd(requests.api_request)} + Lambda, {LAMBDA_MEMORY_MB} MB x {ASSUMED_LAMBDA_SECONDS:g} s, "
            f"{usd(lambda_call)}), {usd(predict * 1e6)} per million; a pipeline event's Lambda call {usd(lambda_call)}",
            f"  S3 requests: {s3}; EventBridge: {events}"]


def build_report(parts: RunningParts, prices: Prices, requests: RequestPrices, region: str,
                 fallback_reason: Optional[str] = None) -> CostReport:
    """The report of ``parts`` at ``prices`` in ``region`` (pure: no I/O); ``fallback_reason``: why the
    Price List API was not used, printed on its own line."""
    figure = figures(parts, prices, requests)
    lines = [f"What the running parts cost in {region} at on-demand list prices (USD, before free tiers; "
             f"storage and data transfer not counted)",
             f"  prices: {prices.source}"]
    if fallback_reason:
        lines.append(f"  the Price List API was not used: {fallback_reason}")
    lines.append(_endpoint_line(parts, prices, figure, region))
    lines.extend(_training_lines(parts, prices, figure, region))
    lines.append(_transform_line(parts, figure, region))
    lines.extend(_request_lines(requests, figure, region))
    return CostReport(region=region, source=prices.source, fallback_reason=fallback_reason, lines=lines, **figure)


def cost_report(config: PipelineConfig, region: str, session=None) -> CostReport:
    """What ``config``'s running parts cost per month in ``region`` at list prices.

    In: the pipeline's configuration, the region to price, and optionally the boto3 Session whose
    credentials ask the Price List API (default: a new ``boto3.Session()``). Out: a CostReport whose
    ``lines`` are ready to print. Prices come from the Price List API (read-only GetProducts) and,
    when it fails for any reason, from the table shipped with the code, with the reason in one line.
    """
    parts = running_parts(config)
    reason = None
    try:
        prices = price_list_prices(parts, region, _pricing_client(session))
    except (BotoCoreError, ClientError, PriceListError) as exc:
        reason = _one_line(exc)
        prices = table_prices(parts, region)
    return build_report(parts, prices, table_request_prices(region), region, reason)
