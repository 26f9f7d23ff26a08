"""MS-CXR and MIMIC-CXR-JPG on disk, written down once for the reader, the synthetic writer, the
caption corpora's MIMIC reader and the start-up checks (design section 5)::

    <root>/MS_CXR_Local_Alignment_v1.1.0.csv   dicom_id, category_name, label_text, x, y, w, h,
                                              image_width, image_height, path, split
    <image_root>/files/pXX/pXXXXXXXX/sYYYYYYYY/<dicom_id>.jpg   (MIMIC-CXR-JPG 2.0.0)

One csv row is one box (``x, y, w, h`` in original pixels); ``path`` is the image relative to
MIMIC-CXR-JPG's root, and its ``pXXXXXXXX`` folder names the patient. MIMIC-CXR's reports sit
beside the study folders, ``files/pXX/pXXXXXXXX/sYYYYYYYY.txt``.
"""

from __future__ import annotations

import re

MSCXR_CSV = "MS_CXR_Local_Alignment_v1.1.0.csv"
REQUIRED_COLUMNS = ("dicom_id", "category_name", "label_text", "x", "y", "w", "h", "image_width",
                    "image_height", "path")
#: The released header: the required columns and the official ``split``.
MSCXR_HEADER = (*REQUIRED_COLUMNS, "split")
_STUDY_RE = re.compile(r"(?:^|/)p\d{2}/p(\d+)/s(\d+)/[^/]+$")


def mimic_study_folder(subject_id: str, study_id: str) -> str:
    """``files/p10/p10000032/s50414267`` (MIMIC-CXR-JPG 2.0.0 layout)."""
    return f"files/p{subject_id[:2]}/p{subject_id}/s{study_id}"


def mimic_jpg_path(subject_id: str, study_id: str, dicom_id: str) -> str:
    """``files/p10/p10000032/s50414267/<dicom_id>.jpg`` (MIMIC-CXR-JPG 2.0.0 layout)."""
    return f"{mimic_study_folder(subject_id, study_id)}/{dicom_id}.jpg"


def mimic_report_path(subject_id: str, study_id: str) -> str:
    """``files/p10/p10000032/s50414267.txt``: MIMIC-CXR's free-text report of a study."""
    return f"{mimic_study_folder(subject_id, study_id)}.txt"


def patient_of(path: str) -> tuple[str, str]:
    """``files/p10/p10000032/s50414267/x.jpg`` -> ``("10000032", "50414267")`` (subject, study)."""
    m = _STUDY_RE.search(path.replace("\\", "/"))
    if not m:
        raise ValueError(f"path {path!r} is not a MIMIC-CXR-JPG path files/pXX/pXXXXXXXX/sXXXXXXXX/<dicom_id>.jpg")
    return m.group(1), m.group(2)
