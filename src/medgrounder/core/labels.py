"""VinDr-CXR label vocabulary (PhysioNet release 1.0.0).

The 22 local labels carry boxes; the 6 global labels are image-level diagnoses. The order is
the column order of ``image_labels_*.csv`` and of the LiteGPT tables (appendix C).
"""

LOCAL_LABELS: tuple[str, ...] = (
    "Aortic enlargement",
    "Atelectasis",
    "Calcification",
    "Cardiomegaly",
    "Clavicle fracture",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Enlarged PA",
    "ILD",
    "Infiltration",
    "Lung Opacity",
    "Lung cavity",
    "Lung cyst",
    "Mediastinal shift",
    "Nodule/Mass",
    "Pleural effusion",
    "Pleural thickening",
    "Pneumothorax",
    "Pulmonary fibrosis",
    "Rib fracture",
    "Other lesion",
)

# Canonical spelling follows the test file and the papers' tables ("Other disease"); the
# training file spells the column "Other diseases" (see ``GLOBAL_ALIASES``).
GLOBAL_LABELS: tuple[str, ...] = (
    "COPD",
    "Lung tumor",
    "Pneumonia",
    "Tuberculosis",
    "Other disease",
    "No finding",
)

NO_FINDING = "No finding"
GLOBAL_ALIASES: dict[str, str] = {"Other diseases": "Other disease"}

LOCAL_INDEX = {name: i for i, name in enumerate(LOCAL_LABELS)}
GLOBAL_INDEX = {name: i for i, name in enumerate(GLOBAL_LABELS)}


def canonical_global(name: str) -> str:
    """Map a global label as spelled in either csv to its canonical name."""
    return GLOBAL_ALIASES.get(name, name)

#: Kaggle VinBigData ``train.csv``: ``class_id`` -> ``class_name`` for the 14 classes it keeps of
#: the 22 local labels (same spellings), plus "No finding" = :data:`KAGGLE_NO_FINDING_ID`.
KAGGLE_CLASSES: tuple[str, ...] = (
    "Aortic enlargement",
    "Atelectasis",
    "Calcification",
    "Cardiomegaly",
    "Consolidation",
    "ILD",
    "Infiltration",
    "Lung Opacity",
    "Nodule/Mass",
    "Other lesion",
    "Pleural effusion",
    "Pleural thickening",
    "Pneumothorax",
    "Pulmonary fibrosis",
)
KAGGLE_NO_FINDING_ID = 14
KAGGLE_CLASS_ID = {name: i for i, name in enumerate(KAGGLE_CLASSES)}


#: MS-CXR's 8 ``category_name`` values, in the column order of PFMVG's tables 1-4.
MSCXR_CATEGORIES: tuple[str, ...] = (
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Atelectasis",
    "Edema",
    "Cardiomegaly",
    "Lung Opacity",
    "Pleural Effusion",
)
