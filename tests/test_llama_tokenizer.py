"""Llama-2's real tokenizer (vocab 32,000) loads through the suite's own loader."""

from __future__ import annotations


def test_real_llama_tokenizer_loads_with_its_vocabulary(llama_tokenizer):
    tok = llama_tokenizer
    assert len(tok) == 32000
    assert (tok.bos_token, tok.eos_token) == ("<s>", "</s>")
    assert tok.pad_token_id is not None
    # SentencePiece splits every digit and merges punctuation, e.g. "><" and "},".
    pieces = tok.tokenize("{<12><30><45><60>}, {<1><2><3><4>}.")
    assert "><" in pieces and "}," in pieces and "}." in pieces
    assert [p for p in pieces if p.isdigit()] == list("123045601234")
