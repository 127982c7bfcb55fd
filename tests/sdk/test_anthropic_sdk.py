"""The official `anthropic` SDK on `/v1/messages`, and the `openai` SDK against backends that
speak Anthropic Messages and Gemini natively (issue 11), through a `tollgate gateway` process.

Spend per request, exact (see fake_native.py and test_openai_sdk.py for the working):
- route `claude` (Anthropic-native fake): 2,745,000 nano-USD;
- route `gemini` (Gemini-native fake): 2,012,500 nano-USD;
- route `chat` (OpenAI-shaped mock): 7,250,000 nano-USD.
"""

import json

import anthropic
import openai
import pytest

CLAUDE_NANOUSD = 2_745_000
GEMINI_NANOUSD = 2_012_500
CHAT_NANOUSD = 7_250_000
CLAUDE = 'route="claude",backend="claude-native",provider="anthropic",model="claude-sonnet-4-5"'
GEMINI = 'route="gemini",backend="gemini-native",provider="gemini",model="gemini-2.5-flash"'
CHAT = 'route="chat",backend="openai-mini",provider="openai",model="gpt-5-mini"'
WEATHER = {
    "name": "get_weather",
    "description": "Current weather of a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def spend(gw, labels):
    return (
        gw.series(f'tollgate_requests_total{{{labels},outcome="ok"}}'),
        gw.series(f"tollgate_cost_nanousd_total{{{labels}}}"),
    )


class Spend:
    """Asserts one more ok request and exactly `nanos` more spend on `labels`."""

    def __init__(self, gw, labels, nanos):
        self.gw, self.labels, self.nanos = gw, labels, nanos

    def __enter__(self):
        self.before = spend(self.gw, self.labels)

    def __exit__(self, *exc):
        if exc[0] is None:
            n, cost = spend(self.gw, self.labels)
            assert (n - self.before[0], cost - self.before[1]) == (1, self.nanos)


@pytest.fixture()
def claude(native_gateway):
    base = native_gateway.api.removesuffix("/v1")
    return anthropic.Anthropic(base_url=base, api_key="not-needed-by-tollgate", max_retries=0)


@pytest.fixture()
def oai(native_gateway):
    return openai.OpenAI(base_url=native_gateway.api, api_key="not-needed-by-tollgate", max_retries=0)


# --- anthropic SDK on /v1/messages -----------------------------------------------------------


def test_messages_pass_through_to_anthropic(native_gateway, claude):
    with Spend(native_gateway, CLAUDE, CLAUDE_NANOUSD):
        msg = claude.messages.create(
            model="claude", max_tokens=256, system="Be brief.",
            messages=[{"role": "user", "content": "Say hi"}],
        )
    assert msg.type == "message"
    assert msg.content[0].text == "Hello world"
    assert msg.stop_reason == "end_turn"
    assert msg.usage.cache_read_input_tokens == 900
    seen = native_gateway.fakes["anthropic"].seen[-1]
    assert seen["headers"]["anthropic-version"] == anthropic.Anthropic(api_key="x").default_headers["anthropic-version"]
    assert seen["body"]["model"] == "claude-sonnet-4-5"
    assert seen["body"]["system"] == "Be brief."


def test_messages_streaming_pass_through(native_gateway, claude):
    with Spend(native_gateway, CLAUDE, CLAUDE_NANOUSD):
        with claude.messages.stream(model="claude", max_tokens=64,
                                    messages=[{"role": "user", "content": "hi"}]) as stream:
            text = "".join(stream.text_stream)
            final = stream.get_final_message()
    assert text == "Hello world"
    assert final.usage.output_tokens == 80


def test_messages_tools(native_gateway, claude):
    with Spend(native_gateway, CLAUDE, CLAUDE_NANOUSD):
        msg = claude.messages.create(
            model="claude", max_tokens=256, tools=[WEATHER],
            messages=[{"role": "user", "content": "Weather in Paris?"}],
        )
    assert msg.stop_reason == "tool_use"
    call = next(b for b in msg.content if b.type == "tool_use")
    assert (call.name, call.input) == ("get_weather", {"city": "Paris"})
    # The tool result goes back through the gateway as the next turn.
    with Spend(native_gateway, CLAUDE, CLAUDE_NANOUSD):
        claude.messages.create(
            model="claude", max_tokens=256, tools=[WEATHER],
            messages=[
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": [b.model_dump() for b in msg.content]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "18°C"}]},
            ],
        )


def test_messages_streaming_tools(native_gateway, claude):
    with Spend(native_gateway, CLAUDE, CLAUDE_NANOUSD):
        with claude.messages.stream(model="claude", max_tokens=64, tools=[WEATHER],
                                    messages=[{"role": "user", "content": "Weather in Paris?"}]) as stream:
            final = stream.get_final_message()
    call = next(b for b in final.content if b.type == "tool_use")
    assert call.input == {"city": "Paris"}


def test_messages_translated_to_an_openai_backend(native_gateway, claude):
    with Spend(native_gateway, CHAT, CHAT_NANOUSD):
        msg = claude.messages.create(model="chat", max_tokens=64, messages=[{"role": "user", "content": "hi"}])
    assert msg.type == "message" and msg.model == "chat"
    assert "mock answer" in msg.content[0].text
    assert msg.usage.cache_read_input_tokens == 200
    with Spend(native_gateway, CHAT, CHAT_NANOUSD):
        with claude.messages.stream(model="chat", max_tokens=64, messages=[{"role": "user", "content": "hi"}]) as s:
            text = "".join(s.text_stream)
            final = s.get_final_message()
    assert "mock answer" in text
    assert final.stop_reason == "end_turn"


def test_messages_translated_to_gemini(native_gateway, claude):
    with Spend(native_gateway, GEMINI, GEMINI_NANOUSD):
        msg = claude.messages.create(model="gemini", max_tokens=64, messages=[{"role": "user", "content": "hi"}])
    assert msg.content[0].text == "Hello world"
    with Spend(native_gateway, GEMINI, GEMINI_NANOUSD):
        with claude.messages.stream(model="gemini", max_tokens=64, messages=[{"role": "user", "content": "hi"}]) as s:
            assert "".join(s.text_stream) == "Hello world"


def test_messages_errors_are_anthropic_errors(claude):
    with pytest.raises(anthropic.NotFoundError) as e:
        claude.messages.create(model="no-such-alias", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert e.value.body["type"] == "error"


# --- openai SDK against native backends ------------------------------------------------------


@pytest.mark.parametrize("route,labels,nanos,prompt", [
    ("claude", CLAUDE, CLAUDE_NANOUSD, 1300),
    ("gemini", GEMINI, GEMINI_NANOUSD, 500),
])
def test_openai_sdk_against_native_backends(native_gateway, oai, route, labels, nanos, prompt):
    with Spend(native_gateway, labels, nanos):
        c = oai.chat.completions.create(model=route, messages=[
            {"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}])
    assert c.choices[0].message.content == "Hello world"
    assert c.choices[0].finish_reason == "stop"
    assert c.usage.prompt_tokens == prompt
    with Spend(native_gateway, labels, nanos):
        chunks = list(oai.chat.completions.create(
            model=route, messages=[{"role": "user", "content": "hi"}], stream=True,
            stream_options={"include_usage": True}))
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == "Hello world"
    assert chunks[-1].usage.prompt_tokens == prompt


def test_openai_sdk_tools_against_anthropic(native_gateway, oai):
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER["input_schema"]}}
    with Spend(native_gateway, CLAUDE, CLAUDE_NANOUSD):
        c = oai.chat.completions.create(model="claude", tools=[tool],
                                        messages=[{"role": "user", "content": "Weather in Paris?"}])
    call = c.choices[0].message.tool_calls[0]
    assert c.choices[0].finish_reason == "tool_calls"
    assert (call.function.name, json.loads(call.function.arguments)) == ("get_weather", {"city": "Paris"})
    seen = native_gateway.fakes["anthropic"].seen[-1]
    assert seen["headers"]["anthropic-version"] == "2023-06-01"
    assert seen["body"]["max_tokens"] == 4096 and seen["body"]["tools"][0]["name"] == "get_weather"
