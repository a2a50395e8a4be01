"""Feature analysis: which SAE features are emotion-selective beyond chance.

For every SAE (a training run, or each member of a sweep) and every feature f,
on the labelled examples (label -1 rows are left out):

  rate[e, f]            fraction of emotion e's prompts on which f fires
  mean_activation[e, f] mean activation of f on emotion e's prompts (zeros in)
  selectivity[f]        the reference system's max_e rate / mean_e rate, as
                        is (its maximum is K, the number of emotions)
  auroc[e, f]           one-vs-rest AUROC of f's activation for emotion e
                        (rank based, ties averaged)
  statistic[f]          max_e auroc[e, f]; emotion[f] is the argmax
  p_value[f]            permutation test of `statistic` under P label shuffles
                        (within template groups): (1 + #{null >= real})/(P + 1)
  q_value[f]            Benjamini-Hochberg over the tested features (those
                        firing on >= min_support labelled examples in total, a
                        label-blind filter)
  significant[f]        q <= fdr and f fires on >= min_support examples of its
                        own emotion and on >= min_support_fraction of them
                        (Settings; 0 = off)
  bh_significant[f]     the same without the fraction (the rule before it),
                        counted beside, with its own shuffled null

Every count of "selective" features (the reference rule selectivity >= 2, the
significant features, per emotion) comes with the same count under each
shuffle of the labels (mean and range), so that chance has a number beside
it. For the significant count under a shuffle, that shuffle's statistics get
p-values against the other shuffles and go through the same BH + support
filter.

Stability (stability.py): significant features are matched one-to-one
(Hungarian on decoder cosine) to the other seeds of the same configuration;
a feature reappears in a seed at cosine >= Settings.stability_threshold.
Validation (validation.py): every feature is tested on other labelled sets
with the same kernels; a corpus-significant feature holds when it is
significant there for the same emotion, counted beside shuffled labels.
Robust directions (consensus.py): consensus of robust features across
seeds per emotion, against the best single feature, the class-mean
direction and random directions.
Causal checks use a logistic-regression emotion probe on the (normalised)
embeddings: ablating a feature (x - a_f W_dec[f]) and steering with it
(x + s * typical_f * W_dec[f], against random directions of the same norm).
Because the probe is linear in x, both reduce to shifts of the probe's logits.

How it is computed. Shuffling labels leaves every feature's ranks and firing
pattern unchanged, so each shuffle only re-sums per-emotion counts and rank
sums. Activations are sparse: a feature's zeros share one rank, so a shuffle
needs only the non-zero entries (N x k for a topk SAE), summed into
[emotion, feature] bins by one segment_sum over all members of a batch --
about 25x cheaper on CPU than the dense [K, N] @ [N, m] product. The device
work is one jitted function, `analyze_members`: `jax.vmap` over a batch of
members for everything per member (encoding, ranks, p-values, BH, null
counts, top prompts, causal checks, themselves vmapped over features),
`jax.lax.scan` over the permutations, memory bounded at 6,144 features x
1,000 permutations x 16 members. A host loop feeds member batches of one size
(the last padded), so a sweep of any size compiles once.

Selection (selection.py): with a selection set (`analyze(select_on=...)`,
the corpus's val split in the pipeline, never the test split) each
configuration is scored by the share of its significant features that hold
there and reappear across seeds; the best one's best member is the chosen
SAE (summary "selection"), and robust features need to hold there only.

Breadth (breadth.py): each significant feature is "broad" when it fires on
>= Settings.broad_support (a fraction) of its emotion's examples, else
"narrow"; counts, holding and reappearing are reported per tier.

Modules: settings (Settings, DeviceSpec), breadth, kernels (per-feature statistics),
device (the jitted member batch, permutations, `compute`), causal (probe,
ablation, steering), stability (matching across seeds), validation,
consensus, selection, summary (analysis.json), loading (runs, sweeps, data), files
(writing and reading the outputs), figures, report_sections, core
(`analyze`). Everything callers use is
re-exported here: `from emosae_jax import analysis; analysis.analyze(...)`.
"""

from emosae_jax.analysis.breadth import (TIERS, broad_features,
                                         member_breadth, tier)
from emosae_jax.analysis.causal import (fit_probe, random_directions,
                                        steering_rows)
from emosae_jax.analysis.consensus import (class_mean_directions,
                                           robust_directions)
from emosae_jax.analysis.core import analyze
from emosae_jax.analysis.device import (
    _nonzero_counts, analyze_members, compute, default_member_batch,
    device_spec, entry_capacity, group_ids, label_permutations, run_members)
from emosae_jax.analysis.files import (ANALYSIS_FILE, ARRAYS_FILE,
                                       load_arrays, load_summary, write)
from emosae_jax.analysis.kernels import (
    auroc_from_rank_sums, average_ranks, benjamini_hochberg, column_at_least,
    entry_rank_offsets, feature_ranks, reference_selectivity, sparse_entries)
from emosae_jax.analysis.loading import (Members, check_inputs, check_labels,
                                         load_data, load_members)
from emosae_jax.analysis.selection import choose as choose_sae
from emosae_jax.analysis.settings import DeviceSpec, Settings
from emosae_jax.analysis.stability import (match_features, reappearing_share,
                                           same_config_groups, stability)
from emosae_jax.analysis.summary import (FORMAT_VERSION, Result,
                                         class_mean_verdicts, count_entry,
                                         feature_records, member_counts,
                                         summarize)
from emosae_jax.analysis.validation import (ValidationSet,
                                            load_validation_set, validate)
