"""deploy.target: the record of a deployment that the cloud verbs read."""

import json

import pytest

from deploy import target


def test_a_saved_target_loads_back_and_builds_route_urls(tmp_path):
    saved = target.Target(stage="prod", region="eu-west-1", bucket="b1",
                          api_url="https://abc.execute-api.eu-west-1.amazonaws.com/api/",
                          endpoint_name="dogbreeds", account="123456789012")
    path = target.save(saved, chalice_dir=tmp_path)
    assert path == tmp_path / ".chalice" / "target-prod.json"
    assert json.loads(path.read_text())["bucket"] == "b1"
    loaded = target.load("prod", chalice_dir=tmp_path)
    assert loaded == saved
    assert loaded.url("/predict?top_k=3") == "https://abc.execute-api.eu-west-1.amazonaws.com/api/predict?top_k=3"
    assert loaded.url("status") == "https://abc.execute-api.eu-west-1.amazonaws.com/api/status"


def test_a_missing_or_broken_record_says_what_to_run(tmp_path):
    with pytest.raises(target.TargetError, match=r"stage 'dev'.*dogbreeds aws deploy --stage dev"):
        target.load("dev", chalice_dir=tmp_path)
    target.target_path("dev", tmp_path).parent.mkdir(parents=True)
    target.target_path("dev", tmp_path).write_text("{not json")
    with pytest.raises(target.TargetError, match="is not JSON"):
        target.load("dev", chalice_dir=tmp_path)
    target.target_path("dev", tmp_path).write_text(json.dumps({"stage": "dev", "region": "x"}))
    with pytest.raises(target.TargetError, match="lacks 'bucket'"):
        target.load("dev", chalice_dir=tmp_path)
