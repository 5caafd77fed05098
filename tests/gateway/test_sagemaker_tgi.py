"""wire_format: tgi — chat requests folded into TGI's inputs/parameters and answered as OpenAI chat."""
from __future__ import annotations

import pytest
from gateway_harness import RunningGateway, build_config, standin_config
from openai import OpenAI

MSG = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello"}]


@pytest.mark.parametrize("stream", [False, True])
def test_tgi_endpoint_through_the_openai_sdk(openai_standin, sagemaker_standin, stream):
    data = standin_config(openai_standin, sagemaker_standin)
    data["backends"]["sagemaker"]["wire_format"] = "tgi"
    sagemaker_standin.script(text="tgi says hi", completion_tokens=4)
    with RunningGateway(build_config(data, openai=openai_standin)) as gw:
        client = OpenAI(base_url=gw.base_url, api_key="x", max_retries=0)
        if stream:
            chunks = list(client.chat.completions.create(model="sagemaker/gpt-4o-mini", messages=MSG,
                                                         stream=True, max_tokens=50))
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        else:
            out = client.chat.completions.create(model="sagemaker/gpt-4o-mini", messages=MSG, max_tokens=50)
            text = out.choices[0].message.content
        assert text.strip() == "tgi says hi"
        sent = sagemaker_standin.last_request.json
        assert "inputs" in sent and "Be brief." in sent["inputs"] and "hello" in sent["inputs"]
        assert sent["parameters"]["max_new_tokens"] == 50
        entry = gw.entries()[-1]
        assert entry["backend"] == "sagemaker" and entry["completion_tokens"] > 0
