"""Published weights, loaded without their frameworks: musicnn's TF checkpoints
(tf_checkpoint.py reads the format, musicnn.py converts, frontend.py is the official
front end, tagger.py the `Tagger.from_pretrained(...)` API, cli.py the `--pretrained`
paths of `tag` and `embed`, finetune.py the `train --init pretrained:NAME` hook)."""
