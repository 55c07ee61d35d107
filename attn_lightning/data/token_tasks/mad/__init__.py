"""MAD's six synthetic tasks (Poli et al. 2024, "Mechanistic Design and Scaling of Hybrid
Architectures", Section 3; reference athms/mad-lab `mad/data/instances.py` and
`configs/tasks/*.yml`), written from that description as `TokenTask`s: in-context recall,
fuzzy recall, noisy recall, selective copying, compression, memorization.

How MAD scores them, and what differs here:

- Accuracy. MAD's `Accuracy` (mad/metrics.py) is torchmetrics' `MulticlassAccuracy` with its
  default `average="macro"` over the flattened answer tokens (`ignore_index=-100`), accumulated
  over the whole test set: per class, tp / (tp + fn), then the mean over the classes that occur
  at a scored position as a target or as a prediction (a class only ever predicted there, e.g.
  a key token guessed where a value is due, counts as 0). Our `answer_token_acc`
  (training/metrics.py) is `average="micro"`: the fraction of scored tokens predicted right.
  The two agree when every predicted class is an answer class with equal support; they part
  when the answer classes are unbalanced or the model predicts non-answer ids.
- Training targets. MAD trains the recall tasks on every next token (`inputs[1:]`) and scores
  the answers only at test; here the same answer positions are scored in training and test.
- Compression. MAD decodes every token from one vector (its encoder's last position) through a
  position-wise MLP; a causal GPT has no such bottleneck (see compression.py).
"""
