"""Fake Anthropic Messages and Gemini upstreams for the SDK tests (loopback, threads).

Each checks a request as the real provider would (path, auth header, a dated `anthropic-version`
(the gateway's 2023-06-01, or the Anthropic SDK's own, which the gateway passes on),
`max_tokens`, role alternation) and answers 400 in the provider's error shape if it would
refuse it; otherwise it answers in the exact wire shape, whole or as SSE. With tools in the
request, the Anthropic fake calls `get_weather` with `{"city": "Paris"}`.

Usage of every answer (and its cost at the prices of native_routes.yaml.in):
- Anthropic: input 300, cache read 900, cache write 100, output 80
  → 300×3 + 900×0.30 + 100×3.75 + 80×15 = 2745 µUSD = 2,745,000 nano-USD.
- Gemini: prompt 500 (100 cached inside), candidates 50, thoughts 100
  → 400×1.25 + 100×0.125 + 50×10 + 100×10 = 2012.5 µUSD = 2,012,500 nano-USD.
"""

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ANTHROPIC_KEY = "sk-ant-sdk-test-123456"
GEMINI_KEY = "AIza-sdk-test-654321"
ANTHROPIC_USAGE = {"input_tokens": 300, "cache_read_input_tokens": 900, "cache_creation_input_tokens": 100, "output_tokens": 80}
GEMINI_USAGE = {"promptTokenCount": 500, "cachedContentTokenCount": 100, "candidatesTokenCount": 50,
                "thoughtsTokenCount": 100, "totalTokenCount": 650}


def sse(name, data):
    prefix = f"event: {name}\n" if name else ""
    return f"{prefix}data: {json.dumps(data)}\n\n"


def anthropic_check(path, headers, req):
    if path != "/v1/messages":
        return f"path {path}"
    if headers.get("x-api-key") != ANTHROPIC_KEY:
        return "x-api-key missing or wrong"
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", headers.get("anthropic-version", "")):
        return f"anthropic-version missing or malformed: {headers.get('anthropic-version')!r}"
    if not isinstance(req.get("max_tokens"), int):
        return "max_tokens: Field required"
    for i, m in enumerate(req.get("messages", [])):
        if m.get("role") != ("user" if i % 2 == 0 else "assistant"):
            return f"messages: roles must alternate (messages[{i}])"
    return None


def anthropic_answer(req):
    tools = bool(req.get("tools"))
    stop = "tool_use" if tools else "end_turn"
    if not req.get("stream"):
        content = [{"type": "text", "text": "Hello world"}]
        if tools:
            content.append({"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}})
        body = {"id": "msg_1", "type": "message", "role": "assistant", "model": req["model"], "content": content,
                "stop_reason": stop, "stop_sequence": None, "usage": ANTHROPIC_USAGE}
        return "application/json", json.dumps(body)
    start_usage = dict(ANTHROPIC_USAGE, output_tokens=1)
    out = sse("message_start", {"type": "message_start", "message": {
        "id": "msg_1", "type": "message", "role": "assistant", "model": req["model"], "content": [],
        "stop_reason": None, "stop_sequence": None, "usage": start_usage}})
    out += sse("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})
    out += sse("ping", {"type": "ping"})
    for t in ["Hello", " world"]:
        out += sse("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": t}})
    out += sse("content_block_stop", {"type": "content_block_stop", "index": 0})
    if tools:
        out += sse("content_block_start", {"type": "content_block_start", "index": 1, "content_block": {
            "type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}})
        for part in ['{"city": ', '"Paris"}']:
            out += sse("content_block_delta", {"type": "content_block_delta", "index": 1,
                                               "delta": {"type": "input_json_delta", "partial_json": part}})
        out += sse("content_block_stop", {"type": "content_block_stop", "index": 1})
    out += sse("message_delta", {"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None},
                                 "usage": {"output_tokens": 80}})
    out += sse("message_stop", {"type": "message_stop"})
    return "text/event-stream", out


def gemini_check(path, query, headers, req):
    if path not in ("/v1beta/models/gemini-2.5-flash:generateContent",
                    "/v1beta/models/gemini-2.5-flash:streamGenerateContent"):
        return f"path {path}"
    if path.endswith(":streamGenerateContent") and query != "alt=sse":
        return "streaming needs alt=sse"
    if headers.get("x-goog-api-key") != GEMINI_KEY:
        return "x-goog-api-key missing or wrong"
    for i, c in enumerate(req.get("contents", [])):
        if c.get("role") != ("user" if i % 2 == 0 else "model"):
            return f"contents[{i}].role"
    return None


def gemini_answer(stream):
    done = {"candidates": [{"content": {"role": "model", "parts": [{"text": " world" if stream else "Hello world"}]},
                            "finishReason": "STOP", "index": 0}],
            "usageMetadata": GEMINI_USAGE, "modelVersion": "gemini-2.5-flash"}
    if not stream:
        return "application/json", json.dumps(done)
    first = {"candidates": [{"content": {"role": "model", "parts": [{"text": "Hello"}]}, "index": 0}]}
    return "text/event-stream", sse(None, first) + sse(None, done)


def start_fake(kind):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            raw = self.rfile.read(int(self.headers.get("content-length", "0")))
            req = json.loads(raw or b"null")
            path, _, query = self.path.partition("?")
            headers = {k.lower(): v for k, v in self.headers.items()}
            self.server.seen.append({"path": path, "headers": headers, "body": req})
            if kind == "anthropic":
                why = anthropic_check(path, headers, req)
                error = {"type": "error", "error": {"type": "invalid_request_error", "message": why}}
                ctype, body = (None, None) if why else anthropic_answer(req)
            else:
                why = gemini_check(path, query, headers, req)
                error = {"error": {"code": 400, "message": why, "status": "INVALID_ARGUMENT"}}
                ctype, body = (None, None) if why else gemini_answer(path.endswith(":streamGenerateContent"))
            status = 200
            if why:
                status, ctype, body = 400, "application/json", json.dumps(error)
            data = body.encode()
            self.send_response(status)
            self.send_header("content-type", ctype)
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.seen = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    host, port = server.server_address
    base = f"http://{host}:{port}" + ("/v1" if kind == "anthropic" else "")
    return server, base
