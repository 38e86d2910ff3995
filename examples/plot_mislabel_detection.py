"""
==================================
Finding mislabeled training images
==================================

We flip 10% of the training labels of scikit-learn's digits at random and rank the training
points with a :class:`~sklearn_influence.MislabelDetector`. A mislabeled point contradicts
its neighbours, so the model can fit it only by bending towards it: its **self-influence**
is large. We compare the recall of the flipped labels, as a function of the fraction of the
data inspected, with the training loss as a baseline and with a random inspection order.
"""

# %%
# Corrupt the labels and fit the detectors
# ----------------------------------------
import matplotlib.pyplot as plt
from sklearn.linear_model import LogisticRegression

from sklearn_influence import MislabelDetector, MislabelRecallDisplay
from sklearn_influence.datasets import load_digits_split
from sklearn_influence.metrics import mislabel_detection_recall

data = load_digits_split(n_train=800, flip_fraction=0.1, random_state=0)
is_flipped = data.y_train != data.y_train_clean
print(f"{is_flipped.sum()} of {len(is_flipped)} training labels flipped")

model = LogisticRegression(solver="newton-cholesky", tol=1e-10)
detectors = {
    "self-influence": MislabelDetector(model, method="self_influence", random_state=0),
    "loss (baseline)": MislabelDetector(model, method="loss", random_state=0),
}
for detector in detectors.values():
    detector.fit(data.X_train, data.y_train)

# %%
# Recall after inspecting 10% and 20% of the training set
# -------------------------------------------------------
for name, detector in detectors.items():
    recall = mislabel_detection_recall(is_flipped, detector.mislabel_scores_, fraction=[0.1, 0.2])
    print(f"{name:>16}: {recall[0]:.2f} at 10%, {recall[1]:.2f} at 20%")
print(f"{'random':>16}: 0.10 at 10%, 0.20 at 20% (expected)")

# %%
# Recall curves
# -------------
fig, ax = plt.subplots(figsize=(5, 4))
for position, (name, detector) in enumerate(detectors.items()):
    MislabelRecallDisplay.from_predictions(
        is_flipped, detector.mislabel_scores_, name=name, ax=ax, plot_chance_level=position == 0
    )
ax.set_title("Flipped digits found vs fraction inspected")
plt.show()

# %%
# The most suspicious training images
# -----------------------------------
# The detector is an outlier detector: ``predict`` labels the ``contamination`` fraction with
# the highest suspicion -1. The top of the ranking is almost only flipped labels.
detector = detectors["self-influence"]
fig, axes = plt.subplots(1, 8, figsize=(9, 1.8))
for ax, index in zip(axes, detector.ranking_[:8], strict=True):
    ax.imshow(data.images_train[index], cmap="gray_r")
    ax.set_title(f"{data.y_train[index]} (true {data.y_train_clean[index]})", fontsize=8)
    ax.set_axis_off()
plt.show()
