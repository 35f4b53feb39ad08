"""Mesh construction, logical-axis rules and the readable divisibility error."""
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from spot_jax import partitioning
from spot_jax.config import size_config
from spot_jax.model import param_logical_axes, param_shapes


def test_mesh_shape_and_axes():
  mesh = partitioning.make_mesh(2)
  assert mesh.axis_names == ("data", "model") and mesh.devices.shape == (4, 2)
  with pytest.raises(ValueError, match=r"NUM_PARTITIONS=3 must divide the 8 devices: set --gin.NUM_PARTITIONS "
                                       r"to a divisor of 8 \(1, 2, 4, 8\)"):
    partitioning.make_mesh(3)


def test_a_bad_num_partitions_reads_as_in_train_and_names_the_values_that_work():
  """make_mesh (eval, infer) said "NUM_PARTITIONS=0 must divide the 8 devices" where train says "must be
  1 or more", and compared a string with 1 (a TypeError)."""
  with pytest.raises(ValueError, match=r"^NUM_PARTITIONS must be 1 or more, got 0: set --gin.NUM_PARTITIONS to a "
                                       r"divisor of the 8 devices \(1, 2, 4, 8\)"):
    partitioning.make_mesh(0)
  with pytest.raises(ValueError, match=r"^NUM_PARTITIONS must be an integer, got '2' \(str\): e.g. "
                                       r"--gin.NUM_PARTITIONS=2 \(no quotes\)"):
    partitioning.make_mesh("2")
  with pytest.raises(ValueError, match=r"got True \(bool\)"):
    partitioning.make_mesh(True)


def test_the_mesh_is_logged_once(caplog):
  partitioning._LOGGED_MESHES.clear()  # pylint: disable=protected-access
  with caplog.at_level("INFO", logger="spot_jax.partitioning"):
    partitioning.make_mesh(2)
    partitioning.make_mesh(2)
  said = [r.getMessage() for r in caplog.records if r.name == "spot_jax.partitioning"]
  assert said == ["mesh: data=4 x model=2 over 8 devices (NUM_PARTITIONS=2)"]


def test_frozen_weights_follow_the_t5x_rules():
  cfg = size_config("tiny", vocab_size=96)
  shardings = partitioning.tree_shardings(param_logical_axes(cfg), partitioning.make_mesh(2))
  assert shardings["token_embedder"]["embedding"].spec == P("model", None)
  assert shardings["encoder"]["layers_0"]["mlp"]["wi_0"]["kernel"].spec == P(None, "model")
  assert shardings["encoder"]["layers_0"]["attention"]["out"]["kernel"].spec == P("model", None)
  assert shardings["encoder"]["encoder_norm"]["scale"].spec == P(None)
  assert shardings["decoder"]["relpos_bias"]["rel_embedding"].spec == P("model", None)


def test_indivisible_dimension_is_named():
  cfg = size_config("tiny", vocab_size=97)
  with pytest.raises(ValueError, match=r"\['decoder'\]\['logits_dense'\].*'vocab'=97 does not divide over mesh axis 'model'"):
    partitioning.check_divisible(param_shapes(cfg), param_logical_axes(cfg), partitioning.make_mesh(2))



def test_a_name_with_several_rules_is_checked_by_the_rule_flax_places_it_by():
  """Flax takes a name's first rule whose mesh axes are free; the check read the last (a dict of the
  rules), so T5X-style rule sets that list ('vocab', 'model') before ('vocab', None) passed the check
  and then failed in placement, and the reverse order was refused though it fits."""
  cfg = size_config("tiny", vocab_size=97)
  shapes, axes, mesh = param_shapes(cfg), param_logical_axes(cfg), partitioning.make_mesh(2)
  first_splits = (("vocab", "model"), ("vocab", None)) + partitioning.DEFAULT_RULES[2:]
  with pytest.raises(ValueError, match=r"'vocab'=97 does not divide over mesh axis 'model' of size 2"):
    partitioning.check_divisible(shapes, axes, mesh, rules=first_splits)
  first_replicates = (("vocab", None), ("vocab", "model")) + partitioning.DEFAULT_RULES[2:]
  partitioning.check_divisible(shapes, axes, mesh, rules=first_replicates)  # 97 rows replicated: fits
  shardings = partitioning.tree_shardings(axes, mesh, first_replicates)
  assert shardings["decoder"]["logits_dense"]["kernel"].spec == P(None, None)  # and that is how Flax places it


def test_an_indivisible_model_names_the_num_partitions_that_fit():
  """'heads'=6 over a model axis of 4 said only "use fewer model partitions"; 2 fits, and 1, not 3."""
  cfg = size_config("tiny", vocab_size=96, num_heads=6)
  with pytest.raises(ValueError, match=r"'heads'=6 does not divide over mesh axis 'model' of size 4 \(mesh data=2 x "
                                       r"model=4\); NUM_PARTITIONS values that fit this model on 8 devices: 1, 2$"):
    partitioning.check_divisible(param_shapes(cfg), param_logical_axes(cfg), partitioning.make_mesh(4))


def test_global_batch_is_split_over_data():
  mesh = partitioning.make_mesh(2)
  batch = partitioning.global_batch({"x": np.arange(16).reshape(8, 2)}, mesh)
  assert batch["x"].shape == (8, 2)
  assert batch["x"].sharding.spec == P("data")
  assert len({str(s.index) for s in batch["x"].addressable_shards}) == 4  # 4 data shards, replicated over model


def test_processes_of_one_model_replica_read_the_same_input_shard():
  """The process index of each device of a [data, model] mesh decides who reads which rows."""
  # 2 processes x 4 devices, data-parallel 8: each process holds 4 rows of its own.
  dp = np.repeat([0, 1], 4)[:, None]
  assert [partitioning.layout_of(dp, p) for p in (0, 1)] == [(0, 2), (1, 2)]
  # NUM_PARTITIONS=8: one replica spans both processes, which hold the same (only) row: one shard.
  mp8 = np.repeat([0, 1], 4)[None, :]
  assert [partitioning.layout_of(mp8, p) for p in (0, 1)] == [(0, 1), (0, 1)]
  # 4 processes x 2 devices, NUM_PARTITIONS=4: processes 0,1 share rows 0; 2,3 share row 1.
  mp4 = np.arange(8).reshape(2, 4) // 2
  assert [partitioning.layout_of(mp4, p) for p in range(4)] == [(0, 2), (0, 2), (1, 2), (1, 2)]
  # 2 processes x 4 devices, NUM_PARTITIONS=2: rows 0-1 on process 0, rows 2-3 on process 1.
  mp2 = np.repeat([0, 1], 4).reshape(4, 2)
  assert [partitioning.layout_of(mp2, p) for p in (0, 1)] == [(0, 2), (1, 2)]
  with pytest.raises(ValueError, match="overlapping or uneven blocks of the data axis"):
    partitioning.layout_of(np.array([[0, 1], [0, 0]]), 0)
  assert partitioning.data_layout(partitioning.make_mesh(2)) == (0, 1)  # one process
