"""Pure-Python check of one generated sequence against the budget-forcing rules.

Shared by the transformers test and the vLLM check script (no torch needed).
``replaced`` holds the output positions where the processor forced a Wait in
place of an end (its own record); ``None`` means "unknown": then a Wait first
token emitted while an end is not yet allowed is taken as such.
"""
THINKING, ENDING, DONE = 0, 1, 2


def check_sequence(tokens, min_tokens, max_tokens, min_waits, end_ids, wait_ids=(), answer_ids=(),
                   replaced=None):
    """Walk ``tokens`` (generated ids) through the rules; raise AssertionError on a violation.

    Returns ``dict(thinking=..., waits=..., finished=..., forced_end=..., end_pos=...)``.
    """
    end_ids, wait_ids, answer_ids = list(end_ids), list(wait_ids), list(answer_ids)
    nt = wu = 0
    phase = THINKING
    queue: list = []
    forced_end = False
    end_pos = None
    for p, tok in enumerate(tokens):
        if phase == DONE:
            break
        if phase == THINKING and nt >= max_tokens:
            assert tok == end_ids[0], f"pos {p}: end {end_ids[0]} forced at the maximum, got {tok}"
            queue, phase, forced_end, end_pos = end_ids[1:] + answer_ids, ENDING, True, p
        elif queue:
            want = queue.pop(0)
            assert tok == want, f"pos {p}: forced token {want} expected, got {tok} (sequence cut)"
            if phase == THINKING:
                nt += 1
        else:
            need = nt < min_tokens or wu < min_waits
            is_repl = (p in replaced) if replaced is not None else \
                (need and bool(wait_ids) and tok == wait_ids[0])
            if is_repl:
                assert need and wait_ids and tok == wait_ids[0], f"pos {p}: bad Wait replacement (token {tok})"
                queue, wu, nt = wait_ids[1:], wu + 1, nt + 1
            elif tok == end_ids[0]:
                assert not need, (f"pos {p}: end emitted too early (thinking {nt} < {min_tokens} "
                                  f"or waits {wu} < {min_waits})")
                queue, phase, end_pos = end_ids[1:], ENDING, p
            else:
                nt += 1
        if phase == ENDING and not queue:
            phase = DONE
    assert nt <= max_tokens, f"thinking {nt} > max {max_tokens}"
    if phase == DONE:
        assert nt >= min_tokens, f"thinking {nt} < min {min_tokens}"
        if wait_ids and not forced_end:
            assert wu >= min_waits, f"waits {wu} < min_waits {min_waits}"
    return dict(thinking=nt, waits=wu, finished=phase == DONE, forced_end=forced_end, end_pos=end_pos)
