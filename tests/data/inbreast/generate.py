"""How INbreast.xls here was written: by xlwt 1.3.0 (a BIFF8 writer independent of featmammo and of
the reader under test, xlrd), installed only to author the fixture (pip install --target DIR xlwt;
PYTHONPATH=DIR python generate.py). The columns, cell types and the two trailing non-data rows
follow the public INbreast.xls: numbers for File Name / ACR / Acquisition date, a number or text
for Bi-Rads (1 vs 4c), 'removed' patient ids. Not run by the tests."""

import xlwt

HEADER = [
    "Patient ID",
    "Patient age",
    "Laterality",
    "View",
    "Acquisition date",
    "File Name",
    "ACR",
    "Bi-Rads",
]
ROWS = [
    ["removed", "removed", "R", "CC", 201001, 22678622, 4, 1],
    ["removed", "removed", "R", "MLO", 201001, 22678646, 4, "4c"],
    ["removed", "removed", "L", "CC", 201003, 20586908, 2, 2],
    ["removed", "removed", "L", "MLO", 201003, 20586934, 2, 5],
]

book = xlwt.Workbook()
sheet = book.add_sheet("Sheet1")
for j, name in enumerate(HEADER):
    sheet.write(0, j, name)
for i, row in enumerate(ROWS, start=1):
    for j, value in enumerate(row):
        sheet.write(i, j, value)
# the public sheet ends with non-data rows (a blank one, then totals/notes)
sheet.write(len(ROWS) + 2, 0, "Total")
sheet.write(len(ROWS) + 2, 5, len(ROWS))
book.save("INbreast.xls")
