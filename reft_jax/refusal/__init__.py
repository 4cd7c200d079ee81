"""The refusal feature and the filters built on it.

- `feature`: R_l (difference in means of last-prompt-token hidden states, harmful minus harmless), cosines to it,
  the threshold tau and the filter's metrics (AUROC, precision / recall);
- `scoring`: the host-side filter pass over a dataset (features, scores, keep mask, report);
- `saft`: SAFT's subspace filter (the literature's baseline).

`from reft_jax import refusal` gives the feature's functions (`refusal.auroc`, ...), re-exported below.
"""

from reft_jax.refusal.feature import (
                                      auroc,
                                      auroc_by_style,
                                      binary_metrics,
                                      calibrate_threshold,
                                      cap_false_positives,
                                      check_refusal_classes,
                                      class_weights,
                                      cosine_scores,
                                      feature_layer,
                                      filter_layers,
                                      gather_last_prompt,
                                      layer_directions,
                                      make_feature_fn,
                                      make_score_fn,
                                      mean_cosine_scores,
                                      refusal_feature,
)
