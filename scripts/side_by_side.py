r"""Steering methods side by side: T5 conditioning, a decoder layer, random
directions and prompt editing, on the same prompts and strengths.

  python scripts/steer.py --directions=dirs_t5 --out=steer_t5 --strengths=0,2,4
  python scripts/steer.py --directions=dirs_layer12 --out=steer_l12 \
      --strengths=0,2,4 --noprompt_edit
  python scripts/side_by_side.py --steering=steer_t5,steer_l12 --out=compare

Scores every run not scored yet with CLAP (as scripts/evaluate.py), then
writes OUT/side_by_side.json (bridge.side_by_side): per non-zero strength,
the mean change from the unsteered baseline, in P(emotion) and valence, of
each run's directions, their random controls and the prompt edit. The runs
must share prompts and strengths.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from absl import flags  # noqa: E402

from emosae_jax import cli  # noqa: E402  (jax-free)

_STEERING = flags.DEFINE_list("steering", None, "Output folders of "
                              "scripts/steer.py.", required=True)
_OUT = flags.DEFINE_string("out", None, "Output folder.", required=True)
_CLAP = flags.DEFINE_string("clap", "laion/clap-htsat-unfused",
                            "CLAP hub name or local folder (for runs not "
                            "scored yet).")
_DEVICE = flags.DEFINE_string("device", "cpu", "cpu, cuda or cuda:N.")


def main(argv):
  del argv
  from bridge import side_by_side
  missing = [d for d in _STEERING.value
             if not (Path(d) / "steering.json").is_file()]
  if missing:
    raise ValueError(f"no steering.json in {missing[0]}; run scripts/steer.py")
  side_by_side.score_missing(_STEERING.value, _CLAP.value, _DEVICE.value)
  table = side_by_side.compare(_STEERING.value, _OUT.value)
  for row in table["rows"]:
    change = row["target_change"]
    print(f"strength {row['strength']:g} {row['method']:>36}: "
          f"P(emotion) {'n/a' if change is None else f'{change:+.4f}'} "
          f"over {row['n']} clips")
  print(f"wrote {_OUT.value}/side_by_side.json")


if __name__ == "__main__":
  cli.run(main)
