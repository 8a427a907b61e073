"""Training: VT-R18 from an image folder (``vtviz train``) and VT-Lite0 by distillation
(``vtviz distill``)."""
