"""The DICOM vocabulary every layer shares: UIDs and transfer syntaxes, VRs, Query/Retrieve
levels, DA/TM/DT/PN values, the header and Part 10 readers, the identifier codec and the
PS3.8 reason tables. Imports only the standard library, pydicom and itself."""

from minipacs.dicom import values as _values  # noqa: F401 - teaches pydicom the Defined Terms it lacks (values.py)
