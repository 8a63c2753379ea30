"""Image classification on scikit-learn's bundled digits: augment and split ->
train an SVM -> batch inference, reporting test accuracy.

Resource specs are measured at default parameters on a 2-core machine
(peak RSS ~0.15 GiB), rounded up.
The images and their split are cached across runs (`cache="inputs"`).
"""

from planflow import Pipeline, component, to_flow

from flows.image_classification import steps

digits = component(steps.digits, cpu=1, mem_gib=0.25, est_seconds=0.5, cache="inputs")
preprocessed = component(steps.preprocessed, cpu=1, mem_gib=0.25, est_seconds=0.5, cache="inputs")
classifier = component(steps.classifier, cpu=1, mem_gib=0.5, est_seconds=2.0)
predictions = component(steps.predictions, cpu=1, mem_gib=0.25, est_seconds=0.5)

pipeline = Pipeline(
    "image-classification",
    [digits, preprocessed, classifier, predictions],
    description="Digits (8x8 images bundled with scikit-learn): shift augmentation, "
    "stratified split, SVM training and batched inference with test accuracy.",
)
image_classification = to_flow(pipeline)
