/* The admin home's user table: edit Max Tokens and Max Train Tokens in place, see the
   balance after the pending changes, and save them all as one atomic batch.

   The server decides (allowance.service); this script only collects the edits, shows
   what the server answers, and never loses a pending edit. */
(function () {
  "use strict";

  var table = document.getElementById("users");
  var savebar = document.getElementById("savebar");
  if (!table || !savebar) return;

  var orgId = table.dataset.org;
  var csrf = (document.querySelector('meta[name="csrf-token"]') || {}).content || "";
  var FIELDS = { max_tokens: "Max Tokens", max_train_tokens: "Max Train Tokens" };
  var MAX_AMOUNT = Math.pow(2, 53);
  var saving = false;
  var leaving = false;
  var generation = 0; // bumped by every change of the pending set, so stale answers are ignored
  var previewTimer = null;

  /* ---- amounts, as people type them (mirrors tokenadmin/amounts.py parse_amount) ---- */

  var AMOUNT = /^([0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)(?:\.([0-9]+))?\s*([kKmMbB]?)$/;
  var SUFFIX_ZEROS = { "": 0, k: 3, m: 6, b: 9 };
  var EXAMPLES = "250000, 250,000, 250K or 1.5M";

  /* Returns {value: int} or {error: message}. Decimal strings, never floats, so that
     "1.000001M" is exactly 1,000,001 and a fraction of a token is refused. */
  function parseAmount(text) {
    var cleaned = text.trim();
    if (!cleaned) return { error: "An amount is required, such as " + EXAMPLES + "." };
    if (cleaned.length > 64) return { error: "An amount has at most 64 characters." };
    if (cleaned.charAt(0) === "-") {
      return { error: "'" + cleaned + "' is negative; amounts are 0 or more tokens." };
    }
    var match = AMOUNT.exec(cleaned);
    if (!match) return { error: "'" + cleaned + "' is not an amount; write it like " + EXAMPLES + "." };
    if (match[2] !== undefined && match[2].length === 3 && !match[3]) {
      /* "250.000": thousands where a point groups them, 250 where it is a fraction. */
      return {
        error: "'" + cleaned + "' is ambiguous: " + match[1] + " or " + match[1] + "," + match[2] +
          "? Write it without the point (" + match[1] + match[2] + ") or with a comma (" +
          match[1] + "," + match[2] + ")."
      };
    }
    var whole = match[1].replace(/,/g, "");
    var fraction = match[2] || "";
    var zeros = SUFFIX_ZEROS[match[3].toLowerCase()];
    var digits;
    if (fraction.length > zeros) {
      if (/[1-9]/.test(fraction.slice(zeros))) {
        return { error: "'" + cleaned + "' is not a whole number of tokens." };
      }
      fraction = fraction.slice(0, zeros);
    }
    digits = whole + fraction + "0".repeat(zeros - fraction.length);
    digits = digits.replace(/^0+(?=[0-9])/, "");
    if (digits.length > 16 || Number(digits) > MAX_AMOUNT) {
      return { error: "'" + cleaned + "' is more than the largest amount, " + format(MAX_AMOUNT) + "." };
    }
    return { value: Number(digits) };
  }

  function format(value) {
    return String(value).replace(/\B(?=(\d{3})+(?!\d))/g, ",");
  }

  /* ---- the state lives on the cells: data-value (stored) and data-pending (yours) ---- */

  function cells() {
    return Array.prototype.slice.call(table.querySelectorAll("td.editable"));
  }

  function pendingCells() {
    return cells().filter(function (cell) { return cell.dataset.pending !== undefined; });
  }

  function rowOf(cell) { return cell.closest("tr"); }

  function describe(cell) {
    return cell.dataset.label + " for " + rowOf(cell).dataset.email;
  }

  function renderCell(cell) {
    var stored = Number(cell.dataset.value);
    var pending = cell.dataset.pending;
    cell.textContent = "";
    var button = document.createElement("button");
    button.type = "button";
    button.className = "cell-value";
    var shown = pending !== undefined ? Number(pending) : stored;
    button.textContent = format(shown);
    var label = describe(cell) + ": " + format(shown);
    if (pending !== undefined) label += " (changed from " + format(stored) + ", not saved)";
    button.setAttribute("aria-label", label + ". Press Enter to change.");
    cell.appendChild(button);
    cell.classList.toggle("changed", pending !== undefined);
    if (pending !== undefined) {
      var was = document.createElement("span");
      was.className = "was";
      was.textContent = "was " + format(stored);
      cell.appendChild(was);
      var undo = document.createElement("button");
      undo.type = "button";
      undo.className = "undo";
      undo.textContent = "Undo";
      undo.setAttribute("aria-label", "Undo the change to " + describe(cell));
      cell.appendChild(undo);
    }
  }

  function setPending(cell, value) {
    if (value === null || value === Number(cell.dataset.value)) {
      delete cell.dataset.pending;
    } else {
      cell.dataset.pending = String(value);
    }
    renderCell(cell);
    clearRowNote(rowOf(cell));
    changed();
  }

  function changed() {
    generation += 1;
    update();
    window.clearTimeout(previewTimer);
    if (pendingCells().length) previewTimer = window.setTimeout(preview, 400);
  }

  /* Ask the server which rows it would refuse (a dry run: nothing is written). */
  function preview() {
    var asked = generation;
    var changes = batch();
    if (!changes.length || saving) return;
    post({ changes: changes, dry_run: true }).then(function (result) {
      if (asked !== generation || saving) return; // edited or saved meanwhile
      var body = result.body || {};
      var refused = result.ok ? body.refused || [] : ((body.error || {}).details || {}).refused || [];
      table.querySelectorAll("tr.refused, tr.conflict").forEach(clearRowNote);
      showRefusals(refused, true);
      if (refused.length) {
        say((refused.length === 1 ? "1 row" : refused.length + " rows") +
            " would be refused as it stands; see the marked rows.", "bad");
      } else {
        say("", "");
      }
      update();
    }, function () { /* a preview is a courtesy; the save itself reports problems */ });
  }

  /* ---- editing a cell ---- */

  function startEdit(cell) {
    if (cell.querySelector("input") || saving) return;
    var current = cell.dataset.pending !== undefined ? cell.dataset.pending : cell.dataset.value;
    cell.textContent = "";
    var input = document.createElement("input");
    input.type = "text";
    input.inputMode = "numeric";
    input.value = format(current);
    input.setAttribute("aria-label", describe(cell) + " (250000, 250,000, 250K or 1.5M)");
    var error = document.createElement("span");
    error.className = "cell-error";
    error.id = "err-" + rowOf(cell).dataset.user + "-" + cell.dataset.field;
    error.setAttribute("role", "alert");
    input.setAttribute("aria-describedby", error.id);
    cell.appendChild(input);
    cell.appendChild(error);
    input.focus();
    input.select();

    var done = false;
    function finish(commit, refocus) {
      if (done) return;
      if (commit) {
        var parsed = parseAmount(input.value);
        if (parsed.error) {
          error.textContent = parsed.error;
          input.setAttribute("aria-invalid", "true");
          if (refocus) input.focus();
          return false;
        }
        done = true;
        setPending(cell, parsed.value);
      } else {
        done = true;
        renderCell(cell);
      }
      if (refocus) cell.querySelector(".cell-value").focus();
      return true;
    }
    input.addEventListener("keydown", function (event) {
      if (event.key === "Enter") {
        event.preventDefault();
        finish(true, true);
      } else if (event.key === "Escape") {
        event.preventDefault();
        finish(false, true);
      }
    });
    input.addEventListener("blur", function () {
      // Leaving an invalid value keeps the cell as it was, so nothing half-typed is queued.
      if (!finish(true, false) && !done) {
        done = true;
        renderCell(cell);
      }
    });
  }

  table.addEventListener("click", function (event) {
    var target = event.target;
    var cell = target.closest("td.editable");
    if (!cell) return;
    if (target.closest("button.undo")) {
      setPending(cell, null);
      cell.querySelector(".cell-value").focus();
      return;
    }
    if (target.closest("input")) return;
    startEdit(cell);
  });

  table.addEventListener("keydown", function (event) {
    var cell = event.target.closest && event.target.closest("td.editable");
    if (!cell || event.target.tagName === "INPUT") return;
    if (event.key === "F2" || (event.key === "Enter" && !event.target.closest("button.undo"))) {
      event.preventDefault();
      startEdit(cell);
    }
  });

  /* ---- the balance cards and the save bar ---- */

  function update() {
    var pending = pendingCells();
    var delta = { inference: 0, training: 0 };
    pending.forEach(function (cell) {
      delta[cell.dataset.kind] += Number(cell.dataset.pending) - Number(cell.dataset.value);
    });
    document.querySelectorAll("#balance [data-kind]").forEach(function (card) {
      var balance = Number(card.dataset.capacity) - Number(card.dataset.allocated);
      var note = card.querySelector("[data-role=pending]");
      var after = balance - delta[card.dataset.kind];
      if (!note) return;
      var changes = pending.some(function (cell) { return cell.dataset.kind === card.dataset.kind; });
      note.hidden = !changes;
      note.classList.toggle("over", after < 0);
      note.querySelector("[data-role=after]").textContent =
        after < 0 ? format(-after) + " over the capacity" : format(after);
    });
    var count = pending.length;
    savebar.hidden = count === 0 && !savebar.querySelector("[data-role=message]").textContent;
    savebar.querySelector("[data-role=count]").textContent =
      count === 1 ? "1 unsaved change" : format(count) + " unsaved changes";
    savebar.querySelector("[data-action=save]").disabled = count === 0 || saving;
    savebar.querySelector("[data-action=discard]").disabled = count === 0 || saving;
  }

  function say(message, kind) {
    var box = savebar.querySelector("[data-role=message]");
    box.textContent = message || "";
    box.className = "savebar-message" + (kind ? " " + kind : "");
  }

  /* ---- what the server refused, shown under its row ---- */

  function clearRowNote(row) {
    row.classList.remove("refused", "conflict");
    var next = row.nextElementSibling;
    if (next && next.classList.contains("row-note")) next.remove();
  }

  function rowNote(row) {
    clearRowNote(row);
    var note = document.createElement("tr");
    note.className = "row-note";
    var cell = document.createElement("td");
    cell.colSpan = row.children.length;
    note.appendChild(cell);
    row.after(note);
    return cell;
  }

  function showRefusals(refused, preview) {
    var byRow = new Map();
    refused.forEach(function (item) {
      var row = item.user_id
        ? table.querySelector('tr[data-user="' + item.user_id + '"]')
        : table.querySelector('tr[data-user="' + item.user + '"]');
      if (!row) return;
      if (!byRow.has(row)) byRow.set(row, []);
      byRow.get(row).push(item);
    });
    byRow.forEach(function (items, row) {
      var cell = rowNote(row);
      var conflict = items.find(function (item) { return item.code === "version_conflict"; });
      row.classList.add(conflict ? "conflict" : "refused");
      if (conflict) {
        showConflict(row, cell, conflict);
        return;
      }
      items.forEach(function (item) {
        var line = document.createElement("span");
        line.className = "row-error";
        line.textContent = (preview ? "Would be refused: " : "") + item.message;
        cell.appendChild(line);
      });
    });
  }

  function showConflict(row, cell, item) {
    var theirs = item.current || {};
    var line = document.createElement("span");
    line.className = "row-error";
    line.textContent = item.message;
    cell.appendChild(line);
    var list = document.createElement("ul");
    list.className = "versions";
    row.querySelectorAll("td.editable").forEach(function (field) {
      var name = field.dataset.field;
      var mine = field.dataset.pending !== undefined ? Number(field.dataset.pending) : Number(field.dataset.value);
      var entry = document.createElement("li");
      entry.textContent = FIELDS[name] + ": yours " + format(mine) + " · theirs " + format(theirs[name]);
      entry.dataset.field = name;
      list.appendChild(entry);
    });
    cell.appendChild(list);
    var keep = document.createElement("button");
    keep.type = "button";
    keep.textContent = "Keep mine";
    keep.setAttribute("aria-label", "Keep my values for " + row.dataset.email);
    var take = document.createElement("button");
    take.type = "button";
    take.textContent = "Take theirs";
    take.setAttribute("aria-label", "Take their values for " + row.dataset.email);
    cell.appendChild(keep);
    cell.appendChild(take);
    keep.addEventListener("click", function () { resolveConflict(row, theirs, true); });
    take.addEventListener("click", function () { resolveConflict(row, theirs, false); });
  }

  /* Theirs becomes the stored state; mine stays pending (against their version) or goes. */
  function resolveConflict(row, theirs, keepMine) {
    row.dataset.version = String(theirs.version);
    row.querySelectorAll("td.editable").forEach(function (cell) {
      var mine = cell.dataset.pending;
      cell.dataset.value = String(theirs[cell.dataset.field]);
      if (!keepMine || mine === undefined || Number(mine) === theirs[cell.dataset.field]) {
        delete cell.dataset.pending;
      }
      renderCell(cell);
    });
    clearRowNote(row);
    say(keepMine ? "Your values for " + row.dataset.email + " are queued again; save to apply them."
                 : "Took the current values for " + row.dataset.email + ".", "");
    changed();
    var first = row.querySelector(".cell-value");
    if (first) first.focus();
  }

  /* ---- saving: every pending change, one request, all or nothing ---- */

  function idempotencyKey() {
    var bytes = new Uint8Array(16);
    window.crypto.getRandomValues(bytes);
    return "dash-" + Array.prototype.map.call(bytes, function (b) {
      return ("0" + b.toString(16)).slice(-2);
    }).join("");
  }

  function batch() {
    var rows = new Map();
    pendingCells().forEach(function (cell) {
      var row = rowOf(cell);
      if (!rows.has(row)) {
        rows.set(row, { user: row.dataset.user, expected_version: Number(row.dataset.version) });
      }
      rows.get(row)[cell.dataset.field] = Number(cell.dataset.pending);
    });
    return Array.from(rows.values());
  }

  function applySaved(answer) {
    (answer.users || []).forEach(function (saved) {
      var row = table.querySelector('tr[data-user="' + saved.user_id + '"]');
      if (!row) return;
      row.dataset.version = String(saved.version);
      clearRowNote(row);
      row.querySelectorAll("td.editable").forEach(function (cell) {
        cell.dataset.value = String(saved[cell.dataset.field]);
        delete cell.dataset.pending;
        renderCell(cell);
      });
    });
    var after = answer.balance_after || {};
    document.querySelectorAll("#balance [data-kind]").forEach(function (card) {
      var kind = after[card.dataset.kind];
      if (!kind) return;
      card.dataset.allocated = String(kind.allocated);
      card.querySelector("[data-role=balance]").textContent = format(kind.balance);
      var allocated = card.querySelector("[data-role=allocated]");
      if (allocated) allocated.textContent = format(kind.allocated);
      var bar = card.querySelector(".bar");
      if (bar && kind.capacity > 0) {
        var share = Math.max(0, Math.min(100, Math.round(100 * kind.allocated / kind.capacity)));
        bar.setAttribute("aria-label", share + "% allocated");
        bar.querySelector("span").style.width = share + "%";
      }
    });
  }

  function post(body) {
    return fetch("/orgs/" + orgId + "/allowances", {
      method: "POST",
      credentials: "same-origin",
      headers: {
        "Content-Type": "application/json",
        Accept: "application/json",
        "X-CSRF-Token": csrf,
        "Idempotency-Key": idempotencyKey(),
      },
      body: JSON.stringify(body),
    }).then(function (response) {
      return response.json().catch(function () { return {}; }).then(function (answer) {
        return { ok: response.ok, status: response.status, body: answer };
      });
    });
  }

  function save() {
    var changes = batch();
    if (!changes.length || saving) return;
    saving = true;
    generation += 1;
    window.clearTimeout(previewTimer);
    say("Saving…", "");
    update();
    table.querySelectorAll("tr.refused, tr.conflict").forEach(clearRowNote);
    post({ changes: changes })
      .then(function (result) {
        saving = false;
        if (result.ok) {
          var count = (result.body.changes || []).length;
          applySaved(result.body);
          say("Saved " + (count === 1 ? "1 change" : format(count) + " changes") + ".", "ok");
        } else {
          var error = (result.body && result.body.error) || {};
          showRefusals((error.details && error.details.refused) || [], false);
          say(error.message || "The save failed (" + result.status + "); nothing was saved.", "bad");
        }
        update();
      })
      .catch(function () {
        saving = false;
        say("Could not reach the server; nothing was saved. Your changes are still here.", "bad");
        update();
      });
  }

  function discard() {
    pendingCells().forEach(function (cell) {
      delete cell.dataset.pending;
      renderCell(cell);
      clearRowNote(rowOf(cell));
    });
    say("", "");
    changed();
  }

  savebar.querySelector("[data-action=save]").addEventListener("click", save);
  savebar.querySelector("[data-action=discard]").addEventListener("click", discard);

  /* ---- never leave with unsaved changes without asking ---- */

  function unsaved() { return pendingCells().length; }

  function askToLeave() {
    var count = unsaved();
    if (!count) return true;
    var ok = window.confirm(
      "You have " + (count === 1 ? "1 unsaved change" : count + " unsaved changes") +
      ". Leave this page and lose " + (count === 1 ? "it" : "them") + "?"
    );
    if (ok) leaving = true;
    return ok;
  }

  window.addEventListener("beforeunload", function (event) {
    if (!unsaved() || leaving) return;
    event.preventDefault();
    event.returnValue = "";
  });

  document.addEventListener("click", function (event) {
    var link = event.target.closest && event.target.closest("a[href]");
    if (!link || event.defaultPrevented || link.target === "_blank") return;
    if (link.getAttribute("href").charAt(0) === "#") return;
    if (event.ctrlKey || event.metaKey || event.shiftKey) return;
    if (!askToLeave()) event.preventDefault();
  });

  document.addEventListener("submit", function (event) {
    if (!askToLeave()) event.preventDefault();
  });

  /* ---- selection for the actions on selected users ---- */

  var selectAll = document.getElementById("select-all");
  var selectedNote = document.querySelector("#actions [data-role=selected]");
  function boxes() { return Array.prototype.slice.call(table.querySelectorAll("input.select")); }
  function updateSelection() {
    var checked = boxes().filter(function (box) { return box.checked; }).length;
    if (selectedNote) {
      selectedNote.textContent = checked ? format(checked) + " selected" : "No users selected";
    }
    if (selectAll) {
      selectAll.checked = checked > 0 && checked === boxes().length;
      selectAll.indeterminate = checked > 0 && checked < boxes().length;
    }
    document.querySelectorAll("#actions button[name=action]").forEach(function (button) {
      button.disabled = checked === 0;
    });
  }
  if (selectAll) {
    selectAll.addEventListener("change", function () {
      boxes().forEach(function (box) { box.checked = selectAll.checked; });
      updateSelection();
    });
  }
  table.addEventListener("change", function (event) {
    if (event.target.classList.contains("select")) updateSelection();
  });

  updateSelection();
  update();
})();
