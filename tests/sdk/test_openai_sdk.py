"""The official `openai` Python SDK against `tollgate gateway` (mock backends)."""

import openai
import pytest

# Mock counts (tests/sdk/manifests/routes.yaml): 1000 prompt tokens of which 200 cached, 400
# output + 100 reasoning → 800 × $2.50 + 200 × $1.25 + 400 × $10 + 100 × $10 per 1M
# = $0.00725 = 7,250,000 nano-USD per chat request.
CHAT_NANOUSD = 7_250_000
CHAT = 'route="chat",backend="openai-mini",provider="openai",model="gpt-5-mini"'
# 12 input tokens × $0.02 per 1M = 240 nano-USD per embeddings request.
EMBED_NANOUSD = 240
EMBED = 'route="embed",backend="openai-embed",provider="openai",model="text-embedding-3-small"'


@pytest.fixture()
def client(gateway):
    return openai.OpenAI(base_url=gateway.api, api_key="not-needed-by-tollgate", max_retries=0)


def chat_spend(gateway):
    return (
        gateway.series(f'tollgate_requests_total{{{CHAT},outcome="ok"}}'),
        gateway.series(f"tollgate_cost_nanousd_total{{{CHAT}}}"),
    )


def test_chat(gateway, client):
    before_n, before_cost = chat_spend(gateway)
    raw = client.chat.completions.with_raw_response.create(
        model="chat", messages=[{"role": "user", "content": "Say hi"}], temperature=0.2
    )
    assert raw.headers["x-tollgate-route"] == "chat"
    assert raw.headers["x-tollgate-backend"] == "openai-mini"
    assert raw.headers["x-tollgate-provider"] == "openai"
    completion = raw.parse()
    assert completion.model == "gpt-5-mini"  # upstream's model id
    assert completion.choices[0].message.content
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.prompt_tokens == 1000
    assert completion.usage.prompt_tokens_details.cached_tokens == 200
    assert completion.usage.completion_tokens_details.reasoning_tokens == 100
    n, cost = chat_spend(gateway)
    assert (n - before_n, cost - before_cost) == (1, CHAT_NANOUSD)


def test_streaming_chat_without_include_usage(gateway, client):
    before_n, before_cost = chat_spend(gateway)
    chunks = list(client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi"}], stream=True))
    assert chunks, "the stream has chunks"
    # The gateway asked upstream for usage and removed the usage-only chunk.
    assert all(c.choices for c in chunks)
    assert all(c.usage is None for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert "mock answer" in text
    assert chunks[-1].choices[0].finish_reason == "stop"
    n, cost = chat_spend(gateway)
    assert (n - before_n, cost - before_cost) == (1, CHAT_NANOUSD)


def test_streaming_chat_with_include_usage(gateway, client):
    before_n, before_cost = chat_spend(gateway)
    chunks = list(
        client.chat.completions.create(
            model="chat",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    last = chunks[-1]
    assert last.choices == []
    assert last.usage.prompt_tokens == 1000
    assert last.usage.completion_tokens == 500
    assert last.usage.total_tokens == 1500
    assert all(c.usage is None for c in chunks[:-1])
    n, cost = chat_spend(gateway)
    assert (n - before_n, cost - before_cost) == (1, CHAT_NANOUSD)


def test_embeddings(gateway, client):
    before = gateway.series(f"tollgate_cost_nanousd_total{{{EMBED}}}")
    # The SDK asks for base64 by default and decodes it.
    result = client.embeddings.create(model="embed", input=["one", "two"])
    assert [d.index for d in result.data] == [0, 1]
    assert len(result.data[0].embedding) == 8
    assert all(isinstance(x, float) for x in result.data[0].embedding)
    assert result.usage.prompt_tokens == 12
    floats = client.embeddings.create(model="embed", input="one", encoding_format="float", dimensions=4)
    assert len(floats.data[0].embedding) == 4
    assert gateway.series(f"tollgate_cost_nanousd_total{{{EMBED}}}") - before == 2 * EMBED_NANOUSD


def test_unknown_model(client):
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    assert err.value.status_code == 404
    assert err.value.code == "model_not_found"
    assert "no-such-model" in err.value.message


def test_bad_request(client):
    with pytest.raises(openai.BadRequestError) as err:
        client.post("/chat/completions", cast_to=object, body={"messages": []})
    assert err.value.code == "missing_model"


def test_models(client):
    assert sorted(m.id for m in client.models.list()) == ["chat", "embed"]
