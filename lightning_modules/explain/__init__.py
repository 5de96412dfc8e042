"""Do the explanations hold? Every map a network offers, scored.

One small module per method or metric, in the manner of pytorch-grad-cam:

    target                 the network as the libraries see it (``ClassScores``), its grid
                           (``grid_target``) and the hook the libraries tap it by (``tapped``)
    attention              the network's own maps (attention, ProtoPNet similarity)
    cams                   Grad-CAM, Grad-CAM++, Score-CAM, EigenCAM (pytorch-grad-cam) on that grid
    integrated_gradients   Integrated Gradients (captum), pooled onto that grid
    baselines              uniform, centre-prior and random maps
    localisation           lesion mass (relevance mass accuracy), pointing game, rank accuracy
    deletion               deletion and insertion curves toward a blurred image
    road                   ROAD (pytorch-grad-cam's remove-and-debias)
    randomisation          cascading model-parameter randomisation (Spearman, SSIM)
    attack_success         ProtoPNet: success rate of "this does not look like that"
    maps, suite, report    all maps of a network; all scores over a split; the table and figures

``experiments/explain.py`` (``make explain``) runs it on a trained run; the definitions and the
results are in ``docs/explanations.md``.
"""
