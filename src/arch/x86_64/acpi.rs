//! ACPI tables. (Being written.)
