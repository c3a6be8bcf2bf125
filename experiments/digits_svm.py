r"""The classical baseline for the default experiment: an SVM on the raw pixels.

    python -m experiments.digits_svm

scikit-learn's `SVC(gamma=0.001)` (its own digits example) on the 64 raw
pixels of the training split, scored on the test split: the same 1,437 / 360
split as the digits dataset (`nfnets_jax.data.digits.split_indices`).
"""
import time

from sklearn import datasets
from sklearn import svm

from nfnets_jax.data import digits


def main():
  data = datasets.load_digits()
  pixels = data.images.reshape(len(data.images), -1)
  split = digits.split_indices()
  start = time.time()
  model = svm.SVC(gamma=0.001).fit(pixels[split["train"]], data.target[split["train"]])
  accuracy = model.score(pixels[split["test"]], data.target[split["test"]])
  correct = round(accuracy * len(split["test"]))
  print(f"SVC(gamma=0.001) on raw pixels: test top-1 {accuracy:.2%} "
        f"({correct}/{len(split['test'])}), {time.time() - start:.2f}s")


if __name__ == "__main__":
  main()
