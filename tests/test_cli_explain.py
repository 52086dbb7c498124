"""``attnkit explain`` as a user meets it (issue 17, part 5): word pieces, token indices, --focus matches, stdin,
the output folder, exact kernels only, and the rollout line's special tokens."""

from __future__ import annotations

import io
import re

import pytest
from helpers import embedded

import attnkit
from attnkit import hub
from attnkit.cli import main
from attnkit.inspect.attribution import METHODS
from attnkit.inspect.outputs import default_directory, slug
from attnkit.inspect.tokens import INDEXED_ABOVE, find_focus

SEED = "The animal didn't cross the street because it was too tired"
CURIE = "Marie Curie won the Nobel prize. Later, Curie discovered polonium with the recurrent encoder."
QUIET = ["--no-html", "--formats", ""]


@pytest.fixture(scope="module")
def curie():
    return attnkit.inspect.explain(CURIE, focus="Curie")  # MiniLM's WordPiece: "cu", "##rie"


def test_word_pieces_are_joined_in_the_token_line_and_marked_in_the_tables(curie, capsys):
    assert curie.tokens[2:4] == ["Cu", "rie"] and curie.joins[3] and not curie.joins[2]
    assert [curie.label(i) for i in (2, 3, 4)] == ["Cu·", "·rie", "won"]
    assert main(["explain", *QUIET, "--focus", "won", CURIE]) == 0
    printed = capsys.readouterr().out
    assert "· joins the pieces of a word" in printed
    assert "2:Cu·3:rie" in printed and "18:rec·19:urrent" in printed and "20:en·21:code·22:r" in printed
    e = attnkit.inspect.explain(CURIE, focus="won")
    row = e.focus_rows[0].mean(0)  # layer 0's table row ranks the pieces with their markers
    best = sorted(range(len(e.tokens)), key=lambda t: -float(row[t]))[:3]
    assert re.search(r"\n0 +" + r" +".join(re.escape(f"{e.label(t)} {float(row[t]):.2f}") for t in best), printed)


def test_a_text_without_pieces_prints_no_marker_and_short_texts_no_indices(capsys):
    assert main(["explain", *QUIET, SEED]) == 0
    printed = capsys.readouterr().out
    assert "tokens (15): [CLS] The animal didn ' t cross the street because it was too tired [SEP]\n" in printed
    assert "·" not in printed


def test_long_texts_list_every_token_after_its_index(capsys):
    text = " ".join([SEED] * 3)
    e = attnkit.inspect.explain(text)
    assert len(e.tokens) > INDEXED_ABOVE
    assert main(["explain", *QUIET, text]) == 0
    printed = capsys.readouterr().out
    assert f"tokens ({len(e.tokens)}, each after its index, for --focus-index):" in printed
    listed = re.findall(r"(\d+):(\S+)", printed.split("for --focus-index):")[1].split("\nfocus:")[0])
    assert [(int(i), t) for i, t in listed] == list(enumerate(e.tokens))  # every token, in order, none missed


def test_an_ambiguous_focus_says_which_match_it_took_and_lists_the_others(capsys):
    assert main(["explain", *QUIET, "--focus", "the", SEED]) == 0
    printed = capsys.readouterr().out
    assert "focus: 'The' (token 1)" in printed
    assert "focus 'the' occurs 2 times: took the 1st, token 1; the other: token 7 ('the:2' picks it)" in printed
    assert main(["explain", *QUIET, "--focus", "the:2", SEED]) == 0
    printed = capsys.readouterr().out
    assert "focus: 'the' (token 7)" in printed and "took the 2nd, token 7; the other: token 1" in printed
    assert main(["explain", *QUIET, "--focus", "it", SEED]) == 0  # one match: nothing to say
    assert "occurs" not in capsys.readouterr().out
    assert main(["explain", *QUIET, "--focus", "the:3", SEED]) == 2
    assert "focus 'the:3': 'the' occurs 2 time(s) in the text (at tokens 1, 7)" in capsys.readouterr().err


def test_a_word_of_pieces_is_matched_whole_and_said_so(curie, capsys):
    assert curie.focus == 2 and curie.notes[0] == (
        "focus 'Curie' is the word 'Cu·rie' of 2 pieces (tokens 2-3); its first piece, token 2, stands for it "
        "(as usual for an encoder)")
    assert "took the 1st, token 2; the other: token 11 ('Curie:2' picks it)" in curie.notes[1]
    assert main(["explain", *QUIET, "--focus", "Curie:2", CURIE]) == 0
    printed = capsys.readouterr().out
    assert "focus: 'Cu·' (token 11)" in printed and "tokens 11-12" in printed
    assert "Most-attended tokens from 'Cu·'" in printed


def test_find_focus_on_hand_made_pieces():
    tokens = ["[CLS]", "the", "un", "believ", "ably", "the", "[SEP]"]
    special = [True, False, False, False, False, False, True]
    words = [None, 0, 1, 1, 1, 2, None]
    assert find_focus(tokens, special, words, "unbelievably") == (2, [
        "focus 'unbelievably' is the word 'un·believ·ably' of 3 pieces (tokens 2-4); its first piece, token 2, "
        "stands for it (as usual for an encoder)"])
    index, notes = find_focus(tokens, special, words, "unbelievably", causal=True)
    assert index == 4 and "its last piece, token 4" in notes[0]  # a decoder's piece that has read the word
    assert find_focus(tokens, special, words, "believ") == (3, [])  # no such word: the piece itself
    assert find_focus(tokens, special, words, "THE:2")[0] == 5
    with pytest.raises(ValueError, match="WORD:N counts from 1"):
        find_focus(tokens, special, words, "the:0")


@pytest.mark.parametrize("argv, message", [
    (["--focus-index", "-1"], "focus index -1 is out of range: the text has 15 tokens (0..14)"),
    (["--focus-index", "15"], "focus index 15 is out of range: the text has 15 tokens (0..14)"),
    (["--layer", "-1"], "layer -1 is out of range: the model has 6 layers (0..5)"),
])
def test_negative_indices_are_refused_like_the_others(argv, message, capsys):
    assert main(["explain", *QUIET, *argv, SEED]) == 2
    assert message in capsys.readouterr().err


def test_focus_index_picks_a_token(capsys):
    assert main(["explain", *QUIET, "--focus-index", "14", SEED]) == 0
    assert "focus: '[SEP]' (token 14)" in capsys.readouterr().out


def test_the_text_is_read_from_stdin_when_none_is_given(monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO("Marie Curie discovered polonium\n"))
    assert main(["explain", *QUIET]) == 0
    assert "tokens (8; · joins the pieces of a word): [CLS] Marie Cu·rie discovered polo·nium [SEP]\n" in \
        capsys.readouterr().out
    monkeypatch.setattr("sys.stdin", io.StringIO("  \n"))
    assert main(["explain", *QUIET]) == 2
    assert "no text given and standard input is empty" in capsys.readouterr().err


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_on_stdin_explains_the_seed_sentence(monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", Terminal("not this"))
    assert main(["explain", *QUIET]) == 0
    assert "focus: 'it' (token 10)" in capsys.readouterr().out


def figures(directory):
    return sorted(p.name for p in directory.iterdir())


def test_out_defaults_to_a_folder_per_text_and_a_rerun_replaces_only_its_own(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    model = "sentence-transformers/all-MiniLM-L6-v2"
    assert main(["explain", "--formats", "svg", SEED]) == 0
    first = default_directory(SEED, model)
    assert first.parent.name == "attnkit-explain" and first.name.startswith("the-animal-didn-t-cross-the-street")
    assert figures(first) == ["attention.html", "head_L5_H11.svg", "layers_mean.svg", "rollout.svg"]
    assert f"wrote 4 files to {first}/" in capsys.readouterr().out
    assert main(["explain", "--formats", "svg", "--no-html", "cats sleep all day"]) == 0  # another text, its own folder
    other = default_directory("cats sleep all day", model)
    kept = figures(other)
    assert len(kept) == 3 and kept[0].startswith("head_L") and kept[1:] == ["layers_mean.svg", "rollout.svg"]
    assert main(["explain", "--formats", "png", "--no-html", "--layer", "2", "--head", "1", SEED]) == 0
    assert figures(first) == ["head_L2_H1.png", "layers_mean.png", "rollout.png"]  # exactly this run's files
    assert figures(other) == kept  # another run's folder: untouched
    assert sorted(p.name for p in (tmp_path / "attnkit-explain").iterdir()) == sorted([first.name, other.name])


def test_slugs_tell_texts_and_models_apart():
    assert slug(SEED, "a") != slug(SEED, "b") != slug(SEED + "!", "b")
    assert slug(SEED, "a") == slug(SEED, "a") and len(slug(SEED * 10, "a")) <= 40 + 7
    assert slug("¿¡!?", "a").startswith("text-") and slug("Été à Paris", "a").startswith("été-à-paris-")


def test_out_that_holds_other_files_is_refused_before_the_model_runs(tmp_path, monkeypatch, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    (out / "rollout.png").write_bytes(b"old")
    monkeypatch.setattr(hub, "load", lambda *a, **k: pytest.fail("the model was loaded before --out was checked"))
    assert main(["explain", "--out", str(out), SEED]) == 2
    assert "holds files attnkit explain did not write (notes.txt)" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "keep me"
    monkeypatch.chdir(out)
    assert main(["explain", "--out", ".", SEED]) == 2
    assert "is the working directory or above it" in capsys.readouterr().err


def test_a_failed_run_leaves_the_previous_files(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    assert main(["explain", "--out", str(out), "--formats", "svg", SEED]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("attnkit.inspect.figures.write_figures", broken)
    assert main(["explain", "--out", str(out), "--formats", "png", SEED]) == 1
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # no temporary folder left beside it


@pytest.mark.parametrize("kernel", ["linear", "performer"])
def test_approximate_kernels_are_refused_with_the_reason(kernel, monkeypatch, capsys):
    monkeypatch.setattr(hub, "load", lambda *a, **k: pytest.fail("the model was loaded before --kernel was checked"))
    assert main(["explain", *QUIET, "--kernel", kernel, SEED]) == 2
    err = capsys.readouterr().err
    assert f"--kernel {kernel!r} is not exact (approximate" in err and "exact kernels: dense, sdpa, tiled" in err
    with pytest.raises(ValueError, match=f"kernel '{kernel}' is not exact"):
        attnkit.inspect.explain(SEED, kernel=kernel)


def test_exact_kernels_are_accepted(capsys):
    assert main(["explain", *QUIET, "--kernel", "dense", SEED]) == 0
    assert main(["explain", *QUIET, "--kernel", "nope", SEED]) == 2
    assert "unknown kernel 'nope'" in capsys.readouterr().err


def test_the_rollout_line_gives_the_special_tokens_share(capsys):
    e = attnkit.inspect.explain(SEED)
    row = e.rollout_row
    assert main(["explain", *QUIET, SEED]) == 0
    printed = capsys.readouterr().out
    share = float(row[0] + row[-1])
    assert share > 0.5  # [CLS] and [SEP] hold most of the mass: what the line used to hide
    order = sorted([0, len(row) - 1], key=lambda t: -float(row[t]))
    each = ", ".join(f"{e.tokens[t]} {float(row[t]):.3f}" for t in order)
    assert f"  special tokens {share:.3f} ({each}), where heads park attention" in printed
    assert f"itself {float(row[e.focus]):.3f}" in printed
    assert "  the others: The 0.031, tired 0.029" in printed


def test_attribution_prints_the_rank_table_and_the_page_shows_it(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["explain", "--attribution", "--steps", "8", "--formats", "", "--out", str(out), SEED]) == 0
    printed = capsys.readouterr().out
    assert "Attention vs attribution for 'it'. Ground truth:" in printed
    for method in ("attention, mean of layers", "rollout", "attention × gradient", "gradient × input",
                   "integrated gradients", "ablation"):
        assert re.search(rf"\n{re.escape(method)} +(—|[+-]\d\.\d\d|n/a) ", printed), method
    assert "raw attention, layer by layer, rho:" in printed and "Masking '" in printed
    shown = embedded((out / "attention.html").read_text(encoding="utf-8"))["explanation"]["attribution"]
    assert shown["lead"].startswith("Ground truth:") and len(shown["methods"]["rows"]) == 7
    assert [row[0] for row in shown["methods"]["rows"]] == [*METHODS, "ablation"]


@pytest.mark.parametrize("argv, message", [(["--steps", "0"], "--steps"), (["--steps", "x"], "--steps")])
def test_bad_steps_are_refused(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["explain", *QUIET, "--attribution", *argv, SEED])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_the_page_and_figures_mark_word_pieces_as_the_terminal_does(curie, tmp_path):
    from attnkit.inspect.figures import write_figures

    view = curie.to_view()
    assert view.queries.tokens[2:5] == ("Cu·", "·rie", "won") and view.keys is view.queries
    assert [curie.label(i) for i in range(len(curie.tokens))] == list(view.queries.tokens)
    write_figures(curie, tmp_path, ["svg"])
    rollout = (tmp_path / "rollout.svg").read_text(encoding="utf-8")  # labels stay text: the bars' title and ticks
    assert "rollout of 'Cu·'" in rollout and "·rie" in rollout
