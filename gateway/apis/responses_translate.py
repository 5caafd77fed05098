"""Responses API ⇄ chat completions, for chat-only containers (SageMaker endpoints).

Stateless by construction: what needs OpenAI's stored state or hosted tools is routed to an
API backend instead (see ``responses.needs_api``), so everything reaching here is a request
that a chat completions call can answer.
"""
from __future__ import annotations

import time
import uuid

from ..http.errors import GatewayError, bad_request

# Responses parameters with the same name and meaning in chat completions.
_SAME = ("temperature", "top_p", "parallel_tool_calls", "stream", "user", "seed", "top_logprobs")
_ROLES = ("user", "assistant", "system", "developer")


def _text_parts(content, where: str) -> str | list:
    """A message item's content as chat content: a string, or parts (text and images)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise bad_request(f"'{where}' must be a string or an array.", param=where)
    parts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text", "text"):
            parts.append({"type": "text", "text": str(part.get("text") or "")})
        elif kind == "refusal":
            parts.append({"type": "text", "text": str(part.get("refusal") or "")})
        elif kind == "input_image" and isinstance(part.get("image_url"), str):
            image = {"url": part["image_url"]}
            if part.get("detail") in ("low", "high", "auto"):
                image["detail"] = part["detail"]
            parts.append({"type": "image_url", "image_url": image})
        else:
            raise bad_request(f"'{where}[{j}]' of type {kind!r} cannot be served by this model's endpoint.",
                              param=f"{where}[{j}]")
    if all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts)  # plain text: what any chat template takes
    return parts


def input_messages(req: dict, strict: bool = True) -> list[dict]:
    """``instructions`` and ``input`` as chat messages; ``strict=False`` skips what it cannot map
    (for counting a request that goes to the API as it is)."""
    messages: list[dict] = []
    if isinstance(req.get("instructions"), str) and req["instructions"]:
        messages.append({"role": "system", "content": req["instructions"]})
    items = req.get("input")
    if isinstance(items, str):
        return messages + [{"role": "user", "content": items}]
    for i, item in enumerate(items if isinstance(items, list) else ()):
        where = f"input[{i}]"
        kind = item.get("type", "message") if isinstance(item, dict) else None
        try:
            if kind == "message" and item.get("role") in _ROLES:
                role = "system" if item["role"] == "developer" else item["role"]
                messages.append({"role": role, "content": _text_parts(item.get("content"), f"{where}.content")})
            elif kind == "function_call":
                call = {"id": str(item.get("call_id") or ""), "type": "function",
                        "function": {"name": str(item.get("name") or ""), "arguments": str(item.get("arguments") or "")}}
                last = messages[-1] if messages else None
                if last is not None and last["role"] == "assistant" and "tool_calls" in last:
                    last["tool_calls"].append(call)  # parallel calls: one assistant turn
                else:
                    messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
            elif kind == "function_call_output":
                output = item.get("output")
                content = output if isinstance(output, str) else _text_parts(output, f"{where}.output")
                messages.append({"role": "tool", "tool_call_id": str(item.get("call_id") or ""), "content": content})
            elif kind == "reasoning":
                continue  # another model's hidden reasoning: nothing a container can take
            else:
                raise bad_request(f"'{where}' of type {kind!r} cannot be served by this model's endpoint.",
                                  param=where)
        except GatewayError:
            if strict:
                raise
    return messages


def chat_tools(tools) -> list[dict]:
    out = []
    for t in tools if isinstance(tools, list) else ():
        if isinstance(t, dict) and t.get("type") == "function":
            fn = {"name": t.get("name"), "parameters": t.get("parameters") or {"type": "object", "properties": {}}}
            if t.get("description") is not None:
                fn["description"] = t["description"]
            if t.get("strict") is not None:
                fn["strict"] = t["strict"]
            out.append({"type": "function", "function": fn})
    return out


def _tool_choice(choice):
    if isinstance(choice, dict) and choice.get("type") == "function":
        return {"type": "function", "function": {"name": choice.get("name")}}
    return choice if choice in ("auto", "none", "required") else None


def _response_format(text) -> dict | None:
    fmt = text.get("format") if isinstance(text, dict) else None
    if not isinstance(fmt, dict) or fmt.get("type") in (None, "text"):
        return None
    if fmt["type"] == "json_object":
        return {"type": "json_object"}
    if fmt["type"] == "json_schema":
        schema = {k: fmt[k] for k in ("name", "schema", "strict", "description") if k in fmt}
        return {"type": "json_schema", "json_schema": schema}
    raise bad_request(f"'text.format.type' {fmt['type']!r} is not supported.", param="text.format")


def to_chat(req: dict, upstream_model: str) -> dict:
    """A chat completions request that asks what the Responses request asks."""
    body = {"model": upstream_model, "messages": input_messages(req)}
    for key in _SAME:
        if req.get(key) is not None:
            body[key] = req[key]
    if req.get("max_output_tokens") is not None:
        body["max_tokens"] = req["max_output_tokens"]
    tools = chat_tools(req.get("tools"))
    if tools:
        body["tools"] = tools
        choice = _tool_choice(req.get("tool_choice"))
        if choice is not None:
            body["tool_choice"] = choice
    fmt = _response_format(req.get("text"))
    if fmt is not None:
        body["response_format"] = fmt
    if body.get("stream"):
        body["stream_options"] = {"include_usage": True}
    return body


def new_ids() -> tuple[str, str]:
    """A response id and a message item id, in OpenAI's prefixes."""
    return f"resp_{uuid.uuid4().hex}", f"msg_{uuid.uuid4().hex}"


def responses_usage(chat_usage) -> dict | None:
    """Chat usage in the Responses shape; None if the container did not say how long the prompt was."""
    if not isinstance(chat_usage, dict) or not isinstance(chat_usage.get("prompt_tokens"), int):
        return None
    prompt, completion = chat_usage["prompt_tokens"], int(chat_usage.get("completion_tokens") or 0)
    details = chat_usage.get("prompt_tokens_details") or {}
    out_details = chat_usage.get("completion_tokens_details") or {}
    return {"input_tokens": prompt,
            "input_tokens_details": {"cached_tokens": int(details.get("cached_tokens") or 0), "cache_write_tokens": 0},
            "output_tokens": completion,
            "output_tokens_details": {"reasoning_tokens": int(out_details.get("reasoning_tokens") or 0)},
            "total_tokens": prompt + completion}


def response_shell(req: dict, response_id: str, status: str, created: int | None = None) -> dict:
    """The Response object's fields that echo the request, as OpenAI fills them."""
    text = req.get("text") if isinstance(req.get("text"), dict) else {"format": {"type": "text"}}
    return {
        "id": response_id, "object": "response", "created_at": created or int(time.time()), "status": status,
        "error": None, "incomplete_details": None, "instructions": req.get("instructions"),
        "max_output_tokens": req.get("max_output_tokens"), "model": req.get("model"), "output": [],
        "parallel_tool_calls": req.get("parallel_tool_calls", True), "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None}, "store": False,
        "temperature": req.get("temperature", 1.0), "text": text, "tool_choice": req.get("tool_choice", "auto"),
        "tools": req.get("tools") or [], "top_p": req.get("top_p", 1.0), "truncation": "disabled",
        "usage": None, "user": req.get("user"), "metadata": req.get("metadata") or {},
    }


def message_item(item_id: str, text: str, status: str = "completed") -> dict:
    return {"id": item_id, "type": "message", "status": status, "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]}


def function_item(call_id: str, name: str, arguments: str, status: str = "completed") -> dict:
    return {"id": f"fc_{uuid.uuid4().hex}", "type": "function_call", "status": status, "call_id": call_id,
            "name": name, "arguments": arguments}


def finish(shell: dict, finish_reason) -> None:
    """Status and incomplete_details from the chat finish reason."""
    if finish_reason == "length":
        shell["status"] = "incomplete"
        shell["incomplete_details"] = {"reason": "max_output_tokens"}
    elif finish_reason == "content_filter":
        shell["status"] = "incomplete"
        shell["incomplete_details"] = {"reason": "content_filter"}
    else:
        shell["status"] = "completed"


def from_chat(req: dict, completion: dict) -> dict:
    """A chat completion as the Response the client asked for."""
    response_id, item_id = new_ids()
    shell = response_shell(req, response_id, "completed", completion.get("created"))
    choice = (completion.get("choices") or [{}])[0]
    msg = choice.get("message") or {} if isinstance(choice, dict) else {}
    if isinstance(msg.get("content"), str) and msg["content"]:
        shell["output"].append(message_item(item_id, msg["content"]))
    for call in msg.get("tool_calls") or ():
        fn = call.get("function") or {} if isinstance(call, dict) else {}
        shell["output"].append(function_item(str(call.get("id") or f"call_{uuid.uuid4().hex[:24]}"),
                                             str(fn.get("name") or ""), str(fn.get("arguments") or "")))
    finish(shell, choice.get("finish_reason") if isinstance(choice, dict) else None)
    shell["usage"] = responses_usage(completion.get("usage"))
    return shell
