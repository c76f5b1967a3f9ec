"""--api-key: Bearer check on every path but /health (and /metrics with --public-metrics)."""

from __future__ import annotations

import httpx
import openai
import pytest
import torch
from fastapi.testclient import TestClient
from transformers import AutoModelForCausalLM, AutoTokenizer

from server_support import save_tiny_model, serve
from specdec import SpeculativeDecoder
from specdec.models import wrap
from specdec.server import Engine, create_app

KEY = "sk-test-0123456789"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("auth_model"), layers=1)


def test_key_from_the_environment_and_public_metrics(model, monkeypatch) -> None:
    monkeypatch.setenv("SPECDEC_API_KEY", KEY)
    with serve("--target", str(model), "--draft", "none", "--dtype", "float32",
               "--served-model-name", "tiny", "--public-metrics") as url:
        assert httpx.get(f"{url}/health").status_code == 200
        assert httpx.get(f"{url}/metrics").status_code == 200  # --public-metrics
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY},
                        {"Authorization": f"Basic {KEY}"}):
            response = httpx.post(f"{url}/v1/completions", headers=headers,
                                  json={"prompt": "a", "max_tokens": 2})
            assert response.status_code == 401, headers
            assert response.json()["error"]["code"] == "invalid_api_key"
            assert response.headers["www-authenticate"] == "Bearer"
        assert httpx.get(f"{url}/v1/models").status_code == 401
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0).models.list()
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)
        assert client.completions.create(model="tiny", prompt="a", max_tokens=2).usage
        stream = client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "a"}], max_tokens=3,
            stream=True)
        assert len(list(stream)) >= 3
        metrics = httpx.get(f"{url}/metrics").text
        assert 'specdec_requests_total{outcome="unauthorized"} 6.0' in metrics  # 4 + 2 above


def test_metrics_need_the_key_by_default(model) -> None:
    tokenizer = AutoTokenizer.from_pretrained(model)
    target = wrap(AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32), tokenizer)
    app = create_app(Engine(SpeculativeDecoder(target, None)), "tiny", api_key=KEY)
    with TestClient(app) as client:
        assert client.get("/health").status_code == 200
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers={"Authorization": f"bearer {KEY}"}).status_code \
            == 200
        assert client.get("/v1/missing").status_code == 401  # unknown paths say nothing
    with pytest.raises(ValueError, match="empty"):
        create_app(Engine(SpeculativeDecoder(target, None)), "tiny", api_key="")
