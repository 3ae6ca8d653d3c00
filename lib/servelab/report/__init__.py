"""Report: the stakeholder tables (`tables`), the sections of the report (`sections.RunReport`) and its HTML (`html`)."""
