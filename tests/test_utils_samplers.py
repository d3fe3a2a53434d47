import pytest

from datasets.samplers import ExactShardSampler, ResumableShardSampler


def test_union_of_ranks_equals_single_process_batches():
    n, b = 103, 4
    single = ResumableShardSampler(n, 0, 1, seed=3, multiple_of=2 * b)
    ranks = [ResumableShardSampler(n, r, 2, seed=3, multiple_of=b) for r in range(2)]
    for s in [single, *ranks]:
        s.set_position(epoch=1)
    one = [i for _, i in single]
    per_rank = [[i for _, i in s] for s in ranks]
    for k in range(len(per_rank[0]) // b):
        union = set(per_rank[0][k * b : (k + 1) * b]) | set(per_rank[1][k * b : (k + 1) * b])
        assert union == set(one[k * 2 * b : (k + 1) * 2 * b])


def test_epoch_changes_order_and_keys_carry_epoch():
    s = ResumableShardSampler(50, 0, 1, seed=0)
    s.set_position(0)
    a = list(s)
    s.set_position(1)
    b = list(s)
    assert [i for _, i in a] != [i for _, i in b]
    assert {e for e, _ in a} == {0} and {e for e, _ in b} == {1}


def test_resume_position_skips_exactly_seen_items():
    s = ResumableShardSampler(64, 1, 2, seed=5, multiple_of=4)
    s.set_position(2)
    full = list(s)
    s.set_position(2, start=12)
    assert list(s) == full[12:] and len(s) == len(full) - 12


def test_too_few_samples_is_a_clear_error():
    with pytest.raises(ValueError, match="cannot fill one step"):
        ResumableShardSampler(5, 0, 2, seed=0, multiple_of=4)


@pytest.mark.parametrize("world", [1, 2, 3])
def test_exact_shard_covers_each_index_once(world):
    n = 10
    got = sorted(i for r in range(world) for i in ExactShardSampler(n, r, world))
    assert got == list(range(n))
