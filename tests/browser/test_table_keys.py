"""The user table as a spreadsheet: keys, paste, the row menu, and its fit on every screen."""

from __future__ import annotations

import re
from typing import Any

from playwright.sync_api import Browser, Dialog, Locator, Page, expect

from tests.browser.conftest import Site, sign_in
from tests.browser.test_table import cell, stored


def value(page: Page, site: Site, email: str, field: str) -> Locator:
    """The button that shows a cell's value: what holds the focus when it is selected."""
    return cell(page, site, email, field).locator("button.cell-value")


def paste(target: Locator, text: str) -> None:
    """What a browser does on Ctrl+V with `text` on the clipboard, as a spreadsheet puts it."""
    target.evaluate(
        """(element, text) => {
          const data = new DataTransfer();
          data.setData("text/plain", text);
          element.dispatchEvent(new ClipboardEvent("paste", {
            clipboardData: data, bubbles: true, cancelable: true }));
        }""",
        text,
    )


def message(page: Page) -> Locator:
    return page.locator("#savebar [data-role=message]")


def test_arrows_enter_tab_escape_undo_and_save_from_the_keyboard(page: Page, site: Site) -> None:
    sign_in(page, site, site.admin_email)
    ada, ben, cy, di = (f"{name}@acme.example" for name in ("ada", "ben", "cy", "di"))

    # Typing on a selected cell replaces its value; Enter commits and selects the cell below.
    value(page, site, ben, "max_tokens").focus()
    page.keyboard.type("300K")
    page.keyboard.press("Enter")
    expect(value(page, site, cy, "max_tokens")).to_be_focused()
    expect(cell(page, site, ben, "max_tokens")).to_have_class("num editable changed")
    expect(value(page, site, ben, "max_tokens")).to_have_text("300,000")

    # Arrows move across the grid of allowance cells.
    page.keyboard.press("ArrowRight")
    expect(value(page, site, cy, "max_train_tokens")).to_be_focused()
    page.keyboard.press("ArrowDown")
    expect(value(page, site, di, "max_train_tokens")).to_be_focused()
    page.keyboard.press("ArrowUp")
    page.keyboard.press("ArrowLeft")
    expect(value(page, site, cy, "max_tokens")).to_be_focused()

    # Enter edits; Tab commits and goes to the next editable cell, never to row actions:
    # from the last cell of a row to the first of the next.
    page.keyboard.press("Enter")
    expect(cell(page, site, cy, "max_tokens").locator("input")).to_be_focused()
    page.keyboard.press("Control+a")
    page.keyboard.type("250,000")
    page.keyboard.press("Tab")
    expect(value(page, site, cy, "max_train_tokens")).to_be_focused()
    page.keyboard.press("Tab")
    expect(value(page, site, di, "max_tokens")).to_be_focused()
    page.keyboard.press("Shift+Tab")
    page.keyboard.press("Shift+Tab")
    page.keyboard.press("Shift+Tab")
    expect(value(page, site, ben, "max_train_tokens")).to_be_focused()
    value(page, site, ada, "max_train_tokens").focus()
    page.keyboard.press("Tab")
    expect(value(page, site, ben, "max_tokens")).to_be_focused()

    # Escape leaves a cell as it was; what is not an amount is refused where it was typed,
    # and a point before three digits (Europe's 250.000) is asked about, never read as 250.
    di_tokens = cell(page, site, di, "max_tokens")
    value(page, site, di, "max_tokens").focus()
    page.keyboard.type("999K")
    page.keyboard.press("Escape")
    expect(value(page, site, di, "max_tokens")).to_be_focused()
    expect(di_tokens).to_have_text("200,000")
    page.keyboard.press("F2")
    page.keyboard.type("1,5M")
    page.keyboard.press("Enter")
    expect(di_tokens.locator(".cell-error")).to_contain_text("not an amount")
    di_tokens.locator("input").fill("250.000")
    page.keyboard.press("Enter")
    expect(di_tokens.locator(".cell-error")).to_contain_text("ambiguous: 250 or 250,000")
    page.keyboard.press("Escape")
    # A cell's own Undo drops its change.
    page.keyboard.type("210000")
    page.keyboard.press("Enter")
    expect(di_tokens).to_have_class("num editable changed")
    di_tokens.get_by_role("button", name="Undo").click()
    expect(di_tokens).to_have_text("200,000")
    expect(page.locator("#savebar [data-role=count]")).to_have_text("2 unsaved changes")

    # Ctrl+Z undoes the last pending edit, then the one before; then the stack is empty.
    page.keyboard.press("Control+z")
    expect(cell(page, site, cy, "max_tokens")).to_have_text("200,000")
    expect(value(page, site, cy, "max_tokens")).to_be_focused()
    page.keyboard.press("Control+z")
    expect(cell(page, site, ben, "max_tokens")).to_have_text("200,000")
    expect(page.locator("td.changed")).to_have_count(0)
    page.keyboard.press("Control+z")
    expect(message(page)).to_have_text("Nothing to undo.")

    # Ctrl+S saves, with the cell still being edited; the notice offers to revert the save
    # and goes away with the next edit, or by itself after a while.
    value(page, site, ben, "max_train_tokens").focus()
    page.keyboard.type("20000")
    page.keyboard.press("Enter")
    page.keyboard.type("15k")
    page.keyboard.press("Control+s")
    expect(message(page)).to_have_text("Saved 2 changes.")
    assert stored(site, ben)[1] == 20_000
    assert stored(site, cy)[1] == 15_000
    revert = page.locator("#savebar").get_by_role("link", name="Revert this save")
    revert_page = re.compile(f"^/orgs/{site.org_id}/batches/[^/]+/revert$")
    expect(revert).to_have_attribute("href", revert_page)
    preview = page.request.get(site.url + (revert.get_attribute("href") or ""))
    assert preview.status == 200, "the link leads to the save's revert preview"
    page.keyboard.press("Control+z")  # saved edits are no longer pending
    expect(message(page)).to_have_text("Nothing to undo.")
    value(page, site, di, "max_tokens").focus()
    page.keyboard.type("210K")
    page.keyboard.press("Enter")
    expect(message(page)).to_have_text("")
    expect(revert).to_be_hidden()
    page.locator("#savebar").evaluate("bar => { bar.dataset.noticeMs = '1000'; }")
    page.keyboard.press("Meta+s")
    expect(message(page)).to_have_text("Saved 1 change.")
    expect(page.locator("#savebar")).to_be_hidden()
    assert stored(site, di)[0] == 210_000

    # The row menu: Right from the last cell reaches it; Enter opens it, Escape closes it.
    value(page, site, ben, "max_train_tokens").focus()
    page.keyboard.press("ArrowRight")
    summary = page.get_by_label("Actions for ben@acme.example")
    expect(summary).to_be_focused()
    page.keyboard.press("Enter")
    menu = page.locator(f'tr[data-user="{site.users[ben]}"] .menu')
    expect(menu.get_by_role("button", name="Deactivate ben@acme.example")).to_be_visible()
    page.keyboard.press("ArrowDown")
    expect(menu.get_by_role("button", name="Deactivate ben@acme.example")).to_be_focused()
    page.keyboard.press("Escape")
    expect(menu).to_be_hidden()
    expect(summary).to_be_focused()


def test_pasting_a_column_and_a_block_of_both_columns_from_a_spreadsheet(
    page: Page, site: Site
) -> None:
    sign_in(page, site, site.admin_email)
    ada, ben, cy = "ada@acme.example", "ben@acme.example", "cy@acme.example"

    paste(value(page, site, ada, "max_tokens"), "300000\r\n400K\r\n1,500,000\r\n")
    expect(page.locator("#savebar [data-role=count]")).to_have_text("3 unsaved changes")
    expect(cell(page, site, ada, "max_tokens").locator(".cell-value")).to_have_text("300,000")
    expect(cell(page, site, ben, "max_tokens").locator(".cell-value")).to_have_text("400,000")
    expect(cell(page, site, cy, "max_tokens").locator(".cell-value")).to_have_text("1,500,000")
    expect(cell(page, site, ada, "max_train_tokens")).not_to_have_class("num editable changed")
    # One paste is one step back.
    page.keyboard.press("Control+z")
    expect(page.locator("td.changed")).to_have_count(0)

    # Two columns, tab-separated, fill both; pasting while editing a cell works too.
    cell(page, site, ben, "max_tokens").click()
    paste(cell(page, site, ben, "max_tokens").locator("input"), "250K\t20000\n260K\t30,000")
    expect(page.locator("td.changed")).to_have_count(4)
    expect(cell(page, site, cy, "max_train_tokens").locator(".cell-value")).to_have_text("30,000")

    # A bad value anywhere refuses the whole paste, naming its row.
    paste(value(page, site, ada, "max_train_tokens"), "15000\n250.000\n")
    expect(message(page)).to_contain_text(
        "Row 2 of the paste (Max Train Tokens for ben@acme.example): '250.000' is ambiguous"
    )
    expect(message(page)).to_contain_text("Nothing was pasted.")
    expect(cell(page, site, ada, "max_train_tokens")).not_to_have_class("num editable changed")
    expect(cell(page, site, ben, "max_train_tokens").locator(".cell-value")).to_have_text("20,000")
    # Two columns do not fit from the second column, and rows past the page are not there.
    paste(value(page, site, ada, "max_train_tokens"), "1\t2")
    expect(message(page)).to_contain_text("The paste has 2 columns")
    paste(value(page, site, cy, "max_tokens"), "300K\n300K\n300K")
    expect(message(page)).to_contain_text("The paste has 3 rows")
    expect(page.locator("td.changed")).to_have_count(4)

    page.keyboard.press("Control+s")
    expect(message(page)).to_have_text("Saved 4 changes.")
    assert stored(site, ben) == (250_000, 20_000)
    assert stored(site, cy) == (260_000, 30_000)
    assert stored(site, ada) == (200_000, 10_000)

    # Leaving with an unsaved edit asks first: a link, a form, closing the page.
    paste(value(page, site, ada, "max_tokens"), "250000")
    dialogs: list[str] = []

    def dismiss(dialog: Dialog) -> None:
        dialogs.append(dialog.type)
        dialog.dismiss()

    page.on("dialog", dismiss)
    page.get_by_role("link", name="Email").click()  # a sort link
    page.get_by_role("button", name="Apply").click()  # the search form
    assert dialogs == ["confirm", "confirm"]
    expect(page.locator("td.changed")).to_have_count(1)
    with page.expect_event("dialog") as leaving:
        page.close(run_before_unload=True)
    assert leaving.value.type == "beforeunload"


def _fit(page: Page) -> dict[str, Any]:
    result: dict[str, Any] = page.evaluate(
        """() => {
          const box = document.querySelector("#users").closest(".table-wrap");
          const edges = box.getBoundingClientRect();
          const outside = [...document.querySelectorAll("#users thead th")]
            .map(th => [th.textContent.trim(), th.getBoundingClientRect()])
            .filter(([, r]) => r.left < edges.left - 0.5 || r.right > edges.right + 0.5
                              || r.right > window.innerWidth)
            .map(([name]) => name);
          return {
            outside,
            boxScrolls: box.scrollWidth > box.clientWidth,
            pageWidth: document.documentElement.scrollWidth,
            viewport: window.innerWidth,
          };
        }"""
    )
    return result


def test_the_table_fits_wide_screens_and_the_page_never_scrolls_sideways(
    browser: Browser, site: Site
) -> None:
    for width, height in ((1280, 800), (1440, 900), (390, 844)):
        context = browser.new_context(viewport={"width": width, "height": height})
        try:
            page = context.new_page()
            sign_in(page, site, site.admin_email)
            if width < 1280:
                fit = _fit(page)
                assert fit["pageWidth"] <= fit["viewport"], (width, fit)
                continue
            # Editing, with a refusal note in a cell, still fits.
            cell(page, site, "cy@acme.example", "max_tokens").click()
            cell(page, site, "cy@acme.example", "max_tokens").locator("input").fill("150000")
            cell(page, site, "cy@acme.example", "max_tokens").locator("input").press("Tab")
            note = cell(page, site, "cy@acme.example", "max_tokens").locator(".note")
            expect(note).to_contain_text("the minimum is 200,000")
            fit = _fit(page)
            assert fit["outside"] == [], (width, fit)
            assert not fit["boxScrolls"], (width, fit)
            assert fit["pageWidth"] <= fit["viewport"], (width, fit)
            edges = note.bounding_box()
            assert edges is not None
            assert edges["x"] + edges["width"] <= width
            actions = page.get_by_label("Actions for di@acme.example").bounding_box()
            assert actions is not None
            assert actions["x"] + actions["width"] <= width
        finally:
            context.close()
