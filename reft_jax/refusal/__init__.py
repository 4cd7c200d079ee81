"""The refusal feature and the filters built on it.

- `feature`: R_l (difference in means of last-prompt-token hidden states, harmful minus harmless), the cosines
  to it and a linear probe's scores, jittable;
- `probe`: the learned filter (filter.scorer = "probe") and the lookalike veto ("veto"), logistic regressions fitted
  on the host;
- `metrics`: the threshold tau and the filter's metrics (AUROC, precision / recall), host side;
- `readout`: which layers the feature is read at, and the jitted passes that read features and scores from a model;
- `scoring`: the host-side filter pass over a dataset (features, scores, keep mask, report);
- `saft`: SAFT's subspace filter (the literature's baseline).

`from reft_jax import refusal` gives the functions of `feature`, `metrics` and `readout` (`refusal.auroc`, ...),
re-exported below.
"""

from reft_jax.refusal.feature import (
                                      check_refusal_classes,
                                      class_weights,
                                      cosine_scores,
                                      gather_last_prompt,
                                      layer_directions,
                                      mean_cosine_scores,
                                      probe_scores,
                                      refusal_feature,
                                      unit_rows,
                                      veto_scores,
)
from reft_jax.refusal.metrics import (
                                      auroc,
                                      auroc_by_style,
                                      binary_metrics,
                                      calibrate_threshold,
                                      cap_false_positives,
                                      filter_metrics,
                                      operating_point,
)
from reft_jax.refusal.readout import feature_layer, filter_layers, make_feature_fn, make_score_fn
