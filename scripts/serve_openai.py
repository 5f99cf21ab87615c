"""The official `openai` Python client against `faascale serve` (started by serve_tests.sh):
models, completion, streamed completion, chat, streamed chat with usage, a wrong key refused.
    python serve_openai.py URL MODEL KEY
Exits non-zero (with the failing check) on any mismatch."""
import sys

import openai

url, model, key = sys.argv[1], sys.argv[2], sys.argv[3]
client = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=120)

models = client.models.list()
assert [m.id for m in models.data] == [model], models

c = client.completions.create(model=model, prompt="Hello world", max_tokens=8, temperature=0,
                              extra_body={"ignore_eos": True})
assert c.object == "text_completion", c
assert c.choices[0].finish_reason == "length", c
assert c.usage.completion_tokens == 8 and c.usage.total_tokens == c.usage.prompt_tokens + 8, c.usage

text = ""
finish = None
for chunk in client.completions.create(model=model, prompt="Hello world", max_tokens=8, temperature=0,
                                       stream=True, extra_body={"ignore_eos": True}):
    text += chunk.choices[0].text
    finish = chunk.choices[0].finish_reason or finish
assert text == c.choices[0].text, (text, c.choices[0].text)
assert finish == "length"

messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi."}]
chat = client.chat.completions.create(model=model, messages=messages, max_completion_tokens=8, temperature=0)
assert chat.object == "chat.completion", chat
assert chat.choices[0].message.role == "assistant", chat
assert chat.usage.completion_tokens <= 8, chat.usage

content = ""
usage = None
roles = []
for chunk in client.chat.completions.create(model=model, messages=messages, max_completion_tokens=8, temperature=0,
                                            stream=True, stream_options={"include_usage": True}):
    if chunk.usage is not None:
        usage = chunk.usage
    for ch in chunk.choices:
        if ch.delta.role:
            roles.append(ch.delta.role)
        content += ch.delta.content or ""
assert roles == ["assistant"], roles
assert content == chat.choices[0].message.content, (content, chat.choices[0].message.content)
assert usage is not None and usage.total_tokens == chat.usage.total_tokens, (usage, chat.usage)

bad = openai.OpenAI(base_url=url + "/v1", api_key="wrong-" + key, max_retries=0, timeout=60)
try:
    bad.models.list()
except openai.AuthenticationError as e:
    assert e.status_code == 401, e
else:
    raise AssertionError("a wrong key was accepted")

try:
    client.completions.create(model=model, prompt="x", n=2)
except openai.BadRequestError as e:
    assert e.status_code == 400 and "one choice" in str(e), e
else:
    raise AssertionError("n=2 was accepted")
print(f"openai {openai.__version__}: models, completion, streamed completion, chat, streamed chat with usage, "
      f"wrong key refused: ok ({url})")
