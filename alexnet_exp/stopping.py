"""When a training run ends early, as rules over the numbers its epochs measured: `stalled` (at chance and not
improving) and `diverged` (a loss that is not finite, or that exploded). Plain arithmetic, no torch: `fit` applies
the rules after each epoch's validation pass, and the tests check them on the figures of the CIFAR-100 notebook.
"""
from __future__ import annotations

import math
from typing import Optional

# A run is "at chance" when its validation loss is within this fraction of ln(C) and its validation accuracy
# at most this multiple of 1/C. The CIFAR-100 notebook's dead runs sat at loss 4.6052 (ln 100 = 4.6052) with
# 1-2% accuracy.
STALL_LOSS_TOLERANCE = 0.01
STALL_ACCURACY_FACTOR = 2.5
# An epoch at chance still counts as progress when its validation loss is below the best earlier one by this
# fraction of ln(C) (0.0046 at C = 100). The notebook's run 1 (SGD, lr 0.005) sat at chance after its first epoch
# with its loss creeping down from ln C, then took off and reached 25.5%: a flat loss is what marks a dead run.
STALL_IMPROVEMENT = 1e-3
# A uniform predictor scores ln(C); a model ten times worse than guessing is confidently wrong on nearly every
# image, which takes logits that have blown up (Adam at lr 10: loss 5e15 at accuracy 1/C). An overfitted network
# stays far below this: its validation loss rises to 1-2x ln C (4.6 -> 6-9 on CIFAR-100), not 10x.
EXPLODED_LOSS_FACTOR = 10.0
# A training loss this many times its first epoch's has grown by orders of magnitude: the optimiser is
# climbing, whatever the absolute value (it catches a blow-up that starts from a small loss on easy data).
EXPLODED_GROWTH = 100.0


def at_chance(val_loss: float, val_accuracy: float, num_classes: int) -> bool:
    chance_loss = math.log(num_classes)
    return (abs(val_loss - chance_loss) <= STALL_LOSS_TOLERANCE * chance_loss
            and val_accuracy <= STALL_ACCURACY_FACTOR / num_classes)


def stall_count(stalled_for: int, val_loss: float, val_accuracy: float, best_earlier_loss: Optional[float],
                num_classes: int) -> int:
    """Epochs in a row, this one included, that were at chance and did not improve on the best earlier
    validation loss (`best_earlier_loss`, None for the first epoch) by `STALL_IMPROVEMENT` x ln(C)."""
    improving = (best_earlier_loss is not None
                 and val_loss < best_earlier_loss - STALL_IMPROVEMENT * math.log(num_classes))
    return stalled_for + 1 if at_chance(val_loss, val_accuracy, num_classes) and not improving else 0


def explosion(train_loss: float, val_loss: float, first_train_loss: float, num_classes: int) -> Optional[str]:
    """Why this epoch's losses say the run diverged, naming the numbers; None when they do not. Only for a
    finite training loss (a non-finite one is caught before validation)."""
    if not math.isfinite(val_loss):
        return f"validation loss became {val_loss}"
    limit = EXPLODED_LOSS_FACTOR * math.log(num_classes)
    for name, loss in (("training", train_loss), ("validation", val_loss)):
        if loss > limit:
            return (f"{name} loss exploded to {loss:.4g}, above {EXPLODED_LOSS_FACTOR:g} x ln C = {limit:.4g} "
                    f"(a uniform guess scores ln C = {math.log(num_classes):.4f})")
    if first_train_loss > 0 and train_loss >= EXPLODED_GROWTH * first_train_loss:
        return (f"training loss grew to {train_loss:.4g}, {train_loss / first_train_loss:.3g}x its first "
                f"epoch's {first_train_loss:.4g}")
    return None
