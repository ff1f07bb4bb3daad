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
  var MAX_AMOUNT = Math.pow(2, 53);
  var saving = false;
  var leaving = false;
  var generation = 0; // bumped by every change of the pending set, so stale answers are ignored
  var previewTimer = null;
  var serverAfter = null; // balance_after of the latest answer about the current pending set
  var source = ""; // who put up the save bar's message: preview, saved, paste, undo, save

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

  function slice(list) { return Array.prototype.slice.call(list); }

  /* ---- the state lives on the cells: data-value (stored) and data-pending (yours) ---- */

  var FIELD_OF_KIND = { inference: "max_tokens", training: "max_train_tokens" };

  function cells() { return slice(table.querySelectorAll("td.editable")); }

  function pendingCells() {
    return cells().filter(function (cell) { return cell.dataset.pending !== undefined; });
  }

  function rowOf(cell) { return cell.closest("tr"); }

  function describe(cell) {
    return cell.dataset.label + " for " + rowOf(cell).dataset.email;
  }

  /* Notes (refusals, conflicts) live in the cell they concern, below its value. */
  function notesOf(cell) {
    return slice(cell.children).filter(function (child) { return child.classList.contains("note"); });
  }

  function renderCell(cell) {
    var notes = notesOf(cell);
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
    button.setAttribute("aria-label", label + ". Type or press Enter to change.");
    button.setAttribute("aria-describedby", "table-hint");
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
      undo.tabIndex = -1;
      undo.textContent = "Undo";
      undo.setAttribute("aria-label", "Undo the change to " + describe(cell));
      cell.appendChild(undo);
    }
    notes.forEach(function (note) { cell.appendChild(note); });
  }

  /* Renders a cell again unless it is being edited (an answer may come in meanwhile). */
  function refresh(cell) {
    if (!(editor && editor.cell === cell)) renderCell(cell);
  }

  /* ---- the grid of allowance cells: rows of this page that can be edited ---- */

  function grid() {
    return slice(table.querySelectorAll("tbody tr"))
      .map(function (row) { return slice(row.querySelectorAll("td.editable")); })
      .filter(function (row) { return row.length > 0; });
  }

  function position(cell) {
    var rows = grid();
    for (var r = 0; r < rows.length; r += 1) {
      var c = rows[r].indexOf(cell);
      if (c >= 0) return { rows: rows, r: r, c: c };
    }
    return null;
  }

  function step(cell, rowStep, columnStep) {
    var at = position(cell);
    if (!at) return null;
    var row = at.rows[at.r + rowStep];
    return row ? row[at.c + columnStep] || null : null;
  }

  function across(cell, forward) {
    var all = grid().reduce(function (flat, row) { return flat.concat(row); }, []);
    return all[all.indexOf(cell) + (forward ? 1 : -1)] || null;
  }

  function focusCell(cell) {
    var button = cell && cell.querySelector(".cell-value");
    if (button) button.focus();
    return Boolean(button);
  }

  /* ---- pending edits, and the history Ctrl/Cmd+Z walks back ---- */

  var history = []; // groups of {cell, before}: one per edit or paste

  function setPending(cell, value) {
    if (value === null || value === Number(cell.dataset.value)) {
      delete cell.dataset.pending;
    } else {
      cell.dataset.pending = String(value);
    }
    clearRefusals(cell);
    renderCell(cell);
  }

  /* Applies [cell, value] pairs as one step of the history. */
  function record(pairs) {
    var group = [];
    pairs.forEach(function (pair) {
      var cell = pair[0];
      var before = cell.dataset.pending;
      if (cell.querySelector(".note.conflict")) resolveCell(cell, true);
      setPending(cell, pair[1]);
      if (cell.dataset.pending !== before) group.push({ cell: cell, before: before });
    });
    if (group.length) history.push(group);
    changed();
    return group.length;
  }

  /* A cell's own Undo takes it out of the history: Ctrl/Cmd+Z never brings it back. */
  function forget(cell) {
    history = history.map(function (group) {
      return group.filter(function (step_) { return step_.cell !== cell; });
    }).filter(function (group) { return group.length > 0; });
  }

  function undoLast() {
    var group = history.pop();
    if (!group) {
      say("Nothing to undo.", "", "undo");
      update();
      return;
    }
    group.slice().reverse().forEach(function (step_) {
      if (!step_.cell.isConnected) return;
      setPending(step_.cell, step_.before === undefined ? null : Number(step_.before));
    });
    changed();
    say(group.length === 1 ? "Undid the change to " + describe(group[0].cell) + "."
                           : "Undid the paste of " + format(group.length) + " values.", "", "undo");
    update();
    focusCell(group[0].cell);
  }

  function changed() {
    generation += 1;
    serverAfter = null;
    if (source === "saved" || source === "undo" || source === "paste") say("", "", "");
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
      var details = result.ok ? body : (body.error || {}).details || {};
      var refused = details.refused || [];
      serverAfter = details.balance_after || null;
      clearRefusals(table);
      showRefusals(refused, true);
      if (refused.length) {
        say((refused.length === 1 ? "1 row" : refused.length + " rows") +
            " would be refused as it stands; see the marked cells.", "bad", "preview");
      } else if (source === "preview") {
        say("", "", "");
      }
      update();
    }, function () { /* a preview is a courtesy; the save itself reports problems */ });
  }

  /* ---- editing a cell ---- */

  var editor = null; // the open editor: {cell, finish(commit) -> closed?}

  function startEdit(cell, typed) {
    if (cell.querySelector("input") || saving) return;
    if (editor) editor.finish(true);
    var notes = notesOf(cell);
    var current = cell.dataset.pending !== undefined ? cell.dataset.pending : cell.dataset.value;
    cell.textContent = "";
    var input = document.createElement("input");
    input.type = "text";
    input.inputMode = "numeric";
    input.autocomplete = "off";
    input.value = typed !== undefined ? typed : format(current);
    input.setAttribute("aria-label", describe(cell) + " (250000, 250,000, 250K or 1.5M)");
    var error = document.createElement("span");
    error.className = "cell-error";
    error.id = "err-" + rowOf(cell).dataset.user + "-" + cell.dataset.field;
    error.setAttribute("role", "alert");
    input.setAttribute("aria-describedby", error.id);
    cell.appendChild(input);
    cell.appendChild(error);
    notes.forEach(function (note) { cell.appendChild(note); });
    input.focus();
    if (typed === undefined) input.select();

    var done = false;
    function finish(commit) {
      if (done) return true;
      if (commit) {
        var parsed = parseAmount(input.value);
        if (parsed.error) {
          error.textContent = parsed.error;
          input.setAttribute("aria-invalid", "true");
          return false;
        }
        done = true;
        editor = null;
        if (parsed.value === Number(current)) {
          renderCell(cell);
        } else {
          record([[cell, parsed.value]]);
        }
      } else {
        done = true;
        editor = null;
        renderCell(cell);
      }
      return true;
    }
    editor = { cell: cell, finish: finish };

    input.addEventListener("keydown", function (event) {
      var key = event.key;
      if (key === "Enter" || key === "ArrowDown" || key === "ArrowUp") {
        event.preventDefault();
        var up = key === "ArrowUp" || (key === "Enter" && event.shiftKey);
        if (finish(true)) focusCell(step(cell, up ? -1 : 1, 0) || cell);
      } else if (key === "Tab") {
        if (!finish(true)) {
          event.preventDefault();
          return;
        }
        var next = across(cell, !event.shiftKey);
        // At either end of the grid, Tab goes on to the rest of the page.
        if (next) event.preventDefault();
        focusCell(next || cell);
      } else if (key === "Escape") {
        event.preventDefault();
        event.stopPropagation();
        finish(false);
        focusCell(cell);
      }
    });
    input.addEventListener("blur", function () {
      // Leaving an invalid value keeps the cell as it was, so nothing half-typed is queued.
      if (!finish(true) && !done) {
        done = true;
        editor = null;
        renderCell(cell);
      }
    });
  }

  table.addEventListener("click", function (event) {
    var target = event.target;
    var cell = target.closest("td.editable");
    if (!cell) return;
    if (target.closest(".note")) return;
    if (target.closest("button.undo")) {
      forget(cell);
      setPending(cell, null);
      changed();
      focusCell(cell);
      return;
    }
    if (target.closest("input")) return;
    startEdit(cell);
  });

  /* Keys on a cell that is not being edited: move, start editing, or type over it. */
  table.addEventListener("keydown", function (event) {
    var target = event.target;
    if (event.defaultPrevented || target.tagName === "INPUT" || !target.closest) return;
    var menu = target.closest("td.row-actions");
    if (menu && event.key === "ArrowLeft" && target.tagName === "SUMMARY") {
      var editable = rowOf(menu).querySelectorAll("td.editable");
      if (editable.length && focusCell(editable[editable.length - 1])) event.preventDefault();
      return;
    }
    var cell = target.closest("td.editable");
    if (!cell || !target.classList.contains("cell-value")) return;
    var key = event.key;
    var moves = { ArrowUp: [-1, 0], ArrowDown: [1, 0], ArrowLeft: [0, -1], ArrowRight: [0, 1] };
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    if (key === "Enter" || key === "F2") {
      event.preventDefault();
      startEdit(cell);
    } else if (moves[key]) {
      event.preventDefault();
      var next = step(cell, moves[key][0], moves[key][1]);
      if (next) {
        focusCell(next);
      } else if (key === "ArrowRight") {
        var summary = rowOf(cell).querySelector("td.row-actions summary");
        if (summary) summary.focus();
      }
    } else if (key === "Tab") {
      var over = across(cell, !event.shiftKey);
      if (over) {
        event.preventDefault();
        focusCell(over);
      }
    } else if (key.length === 1 && key !== " ") {
      // Typing on a selected cell replaces its value, as in a spreadsheet.
      event.preventDefault();
      startEdit(cell, key);
    }
  });

  /* ---- paste: a column (or a block of both columns) copied from a spreadsheet ---- */

  function pastedBlock(text) {
    var lines = text.replace(/\r\n?/g, "\n").replace(/\n+$/, "").split("\n");
    return lines.map(function (line) {
      return line.split("\t").map(function (value) {
        return value.trim().replace(/^"(.*)"$/, "$1").trim();
      });
    });
  }

  function paste(cell, block) {
    var at = position(cell);
    if (!at) return;
    var width = Math.max.apply(null, block.map(function (line) { return line.length; }));
    var columns = at.rows[at.r].length;
    if (at.c + width > columns) {
      say("The paste has " + width + " columns; from " + cell.dataset.label + " there " +
          (columns - at.c === 1 ? "is 1" : "are " + (columns - at.c)) + ". Paste it into the " +
          at.rows[at.r][0].dataset.label + " column. Nothing was pasted.", "bad", "paste");
      update();
      return;
    }
    var left = at.rows.length - at.r;
    if (block.length > left) {
      say("The paste has " + format(block.length) + " rows; from " + rowOf(cell).dataset.email +
          " down this page has " + format(left) + ". Nothing was pasted.", "bad", "paste");
      update();
      return;
    }
    var pairs = [];
    for (var i = 0; i < block.length; i += 1) {
      for (var j = 0; j < block[i].length; j += 1) {
        var target = at.rows[at.r + i][at.c + j];
        if (block[i][j] === "") continue; // an empty spreadsheet cell leaves this one as it is
        var parsed = parseAmount(block[i][j]);
        if (parsed.error) {
          say("Row " + (i + 1) + " of the paste (" + describe(target) + "): " + parsed.error +
              " Nothing was pasted.", "bad", "paste");
          update();
          focusCell(target);
          return;
        }
        pairs.push([target, parsed.value]);
      }
    }
    if (!pairs.length) return;
    var count = record(pairs);
    say("Pasted " + (count === 1 ? "1 value" : format(count) + " values") + " into " +
        (block.length === 1 ? "1 row" : format(block.length) + " rows") + ".", "", "paste");
    update();
    focusCell(cell);
  }

  table.addEventListener("paste", function (event) {
    var cell = event.target.closest && event.target.closest("td.editable");
    if (!cell || saving) return;
    var text = (event.clipboardData || window.clipboardData).getData("text") || "";
    var block = pastedBlock(text);
    var single = block.length === 1 && block[0].length === 1;
    if (single && event.target.tagName === "INPUT") return; // an ordinary paste into the box
    event.preventDefault();
    if (editor) editor.finish(false);
    paste(cell, block);
  });

  /* ---- the balance cards and the save bar ---- */

  function update() {
    var pending = pendingCells();
    var delta = { inference: 0, training: 0 };
    pending.forEach(function (cell) {
      delta[cell.dataset.kind] += Number(cell.dataset.pending) - Number(cell.dataset.value);
    });
    document.querySelectorAll("#balance [data-kind]").forEach(function (card) {
      var kind = card.dataset.kind;
      var note = card.querySelector("[data-role=pending]");
      if (!note) return;
      // The server's figure when it has answered for these edits, so card and rows agree.
      var after = serverAfter && serverAfter[kind] ? serverAfter[kind].balance
        : Number(card.dataset.capacity) - Number(card.dataset.allocated) - delta[kind];
      var changes = pending.some(function (cell) { return cell.dataset.kind === kind; });
      note.hidden = !changes;
      note.classList.toggle("over", after < 0);
      note.querySelector("[data-role=after]").textContent =
        after < 0 ? format(-after) + " over the balance" : format(after);
    });
    var count = pending.length;
    savebar.hidden = count === 0 && !savebar.querySelector("[data-role=message]").textContent;
    savebar.querySelector("[data-role=count]").textContent =
      count === 0 ? "" : count === 1 ? "1 unsaved change" : format(count) + " unsaved changes";
    savebar.querySelector("[data-action=save]").disabled = count === 0 || saving;
    savebar.querySelector("[data-action=discard]").disabled = count === 0 || saving;
  }

  var noticeTimer = null;
  var revertLink = savebar.querySelector("[data-role=revert]");

  function say(message, kind, from, revert) {
    var box = savebar.querySelector("[data-role=message]");
    box.textContent = message || "";
    box.className = "savebar-message" + (kind ? " " + kind : "");
    source = message ? from || "" : "";
    window.clearTimeout(noticeTimer);
    if (revertLink) {
      revertLink.hidden = !revert;
      if (revert) revertLink.href = revert;
    }
  }

  /* "Saved" goes away by itself after a while (not while the pointer or focus is on it). */
  function hideNoticeLater() {
    var wait = Number(savebar.dataset.noticeMs) || 8000;
    noticeTimer = window.setTimeout(function () {
      if (savebar.matches(":hover") || savebar.contains(document.activeElement)) {
        hideNoticeLater();
        return;
      }
      say("", "", "");
      update();
    }, wait);
  }

  /* ---- what the server refused, in the cells it concerns ---- */

  function addNote(cell, kind, text) {
    var note = document.createElement("div");
    note.className = "note " + kind;
    var line = document.createElement("span");
    line.className = "row-error";
    line.textContent = text;
    note.appendChild(line);
    cell.appendChild(note);
    return note;
  }

  function markRow(row) {
    row.classList.toggle("refused", Boolean(row.querySelector(".note.refusal")));
    row.classList.toggle("conflict", Boolean(row.querySelector(".note.conflict")));
  }

  /* Clears refusal notes in a cell, or everywhere in the table; a cell's edit also clears
     the notes about its whole row. Conflicts stay until resolved. */
  function clearRefusals(scope) {
    var notes = slice(scope.querySelectorAll(".note.refusal"));
    if (scope !== table) notes = notes.concat(slice(rowOf(scope).querySelectorAll("td.who .note.refusal")));
    notes.forEach(function (note) {
      var row = note.closest("tr");
      note.remove();
      markRow(row);
    });
  }

  function rowFor(item) {
    var ref = item.user_id || item.user || "";
    return table.querySelector('tr[data-user="' + CSS.escape(ref) + '"]') ||
      table.querySelector('tr[data-email="' + CSS.escape(item.email || ref) + '"]');
  }

  function showRefusals(refused, preview) {
    refused.forEach(function (item) {
      var row = rowFor(item);
      if (!row) return;
      if (item.code === "version_conflict") {
        showConflict(row, item);
        return;
      }
      var field = item.kind ? FIELD_OF_KIND[item.kind] : null;
      var cell = field ? row.querySelector('td.editable[data-field="' + field + '"]') : null;
      addNote(cell || row.querySelector("td.who"), "refusal",
              (preview ? "Would be refused: " : "") + item.message);
      markRow(row);
    });
  }

  /* An actor as the journal names it ("user:ravi@acme.example"), in words. */
  function person(actor) {
    var text = String(actor || "");
    var split = text.indexOf(":");
    var label = split < 0 ? "" : text.slice(0, split);
    var name = split < 0 ? text : text.slice(split + 1);
    if (label === "user") {
      var row = table.querySelector('tr[data-email="' + CSS.escape(name) + '"]');
      return (row && row.dataset.name) || name;
    }
    if (label === "key") return "the API key " + name;
    if (label === "operator") return "the operator " + name;
    if (text === "system") return "the system";
    return name || "Someone";
  }

  /* A moment in the organization's time zone, with its date unless it is today. */
  function when(at) {
    var date = new Date(at);
    if (isNaN(date.getTime())) return "";
    var zone = table.dataset.tz || "UTC";
    try {
      var clock = new Intl.DateTimeFormat("en-GB", {
        timeZone: zone, hour: "2-digit", minute: "2-digit", hourCycle: "h23", timeZoneName: "short",
      }).format(date);
      var day = new Intl.DateTimeFormat("en-CA", {
        timeZone: zone, year: "numeric", month: "2-digit", day: "2-digit",
      });
      var today = day.format(date) === day.format(new Date());
      return (today ? "at " : "on " + day.format(date) + " at ") + clock;
    } catch (error) {
      return "at " + date.toISOString().slice(11, 16) + " UTC";
    }
  }

  /* Someone else changed this user since the page loaded: their change of a column this
     edit did not touch is taken silently; each column both changed gets its own note with
     who changed it, when, from and to, and Keep mine / Take theirs. */
  function showConflict(row, item) {
    var current = item.current || {};
    var fields = item.conflicts;
    if (!fields) {
      fields = slice(row.querySelectorAll("td.editable"))
        .filter(function (cell) { return cell.dataset.pending !== undefined; })
        .map(function (cell) { return cell.dataset.field; });
    }
    if (fields.indexOf("status") >= 0 || typeof current.version !== "number") {
      // Deactivated or reactivated meanwhile: no value to choose, the row itself changed.
      addNote(row.querySelector("td.who"), "refusal", item.message + " Reload the page to see it.");
      markRow(row);
      return;
    }
    row.dataset.current = String(current.version);
    var shown = 0;
    row.querySelectorAll("td.editable").forEach(function (cell) {
      var field = cell.dataset.field;
      if (typeof current[field] !== "number") return;
      var old = cell.querySelector(".note.conflict");
      if (old) old.remove();
      if (fields.indexOf(field) < 0) {
        cell.dataset.value = String(current[field]);
        if (Number(cell.dataset.pending) === current[field]) delete cell.dataset.pending;
        refresh(cell);
        return;
      }
      shown += 1;
      var mine = cell.dataset.pending !== undefined ? cell.dataset.pending : cell.dataset.value;
      var theirs = (item.changes_since || []).filter(function (change) {
        return change.field === field;
      });
      var text;
      if (theirs.length) {
        var who = theirs.map(function (change) { return person(change.by); })
          .filter(function (name, index, all) { return all.indexOf(name) === index; });
        var last = theirs[theirs.length - 1];
        text = who.join(" and ") + " changed " + cell.dataset.label + " from " +
          format(theirs[0].from) + " to " + format(last.to) + (last.at ? " " + when(last.at) : "") +
          "; yours is " + format(mine) + ".";
      } else {
        text = item.message + " Theirs is " + format(current[field]) + "; yours is " + format(mine) + ".";
      }
      var note = addNote(cell, "conflict", text);
      note.dataset.theirs = String(current[field]);
      note.dataset.mine = mine;
      var choices = document.createElement("span");
      choices.className = "choices";
      [["Keep mine", true], ["Take theirs", false]].forEach(function (choice) {
        var button = document.createElement("button");
        button.type = "button";
        button.textContent = choice[0];
        button.setAttribute("aria-label", choice[0] + ": " + describe(cell));
        button.addEventListener("click", function () {
          resolveCell(cell, choice[1]);
          changed();
          say(choice[1] ? "Your " + describe(cell) + " is queued again; save to apply it."
                        : "Took their " + describe(cell) + ".", "", "undo");
          update();
          focusCell(cell);
        });
        choices.appendChild(button);
      });
      note.appendChild(choices);
      refresh(cell);
    });
    if (!shown) addNote(row.querySelector("td.who"), "refusal", item.message);
    markRow(row);
  }

  /* Theirs becomes the stored value; mine stays pending (Keep mine) or goes. Once every
     conflicting cell of the row is settled, edits are made against their version. */
  function resolveCell(cell, keepMine) {
    var note = cell.querySelector(".note.conflict");
    if (!note) return;
    var theirs = Number(note.dataset.theirs);
    var mine = Number(note.dataset.mine);
    note.remove();
    cell.dataset.value = String(theirs);
    if (keepMine && mine !== theirs) {
      cell.dataset.pending = String(mine);
    } else {
      delete cell.dataset.pending;
    }
    var row = rowOf(cell);
    if (!row.querySelector(".note.conflict") && row.dataset.current) {
      row.dataset.version = row.dataset.current;
      delete row.dataset.current;
    }
    markRow(row);
    renderCell(cell);
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
      delete row.dataset.current;
      row.querySelectorAll(".note").forEach(function (note) { note.remove(); });
      markRow(row);
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
    if (editor && !editor.finish(true)) return;
    var changes = batch();
    if (saving) return;
    if (!changes.length) {
      say("Nothing to save.", "", "undo");
      update();
      return;
    }
    saving = true;
    generation += 1;
    window.clearTimeout(previewTimer);
    say("Saving…", "", "save");
    update();
    clearRefusals(table);
    post({ changes: changes })
      .then(function (result) {
        saving = false;
        if (result.ok) {
          var count = (result.body.changes || []).length;
          applySaved(result.body);
          history = [];
          serverAfter = null;
          var batchId = result.body.batch;
          say("Saved " + (count === 1 ? "1 change" : format(count) + " changes") + ".", "ok", "saved",
              batchId ? "/orgs/" + orgId + "/batches/" + encodeURIComponent(batchId) + "/revert" : null);
          hideNoticeLater();
        } else {
          var error = (result.body && result.body.error) || {};
          var details = error.details || {};
          serverAfter = details.balance_after || null;
          showRefusals(details.refused || [], false);
          say(error.message || "The save failed (" + result.status + "); nothing was saved.", "bad", "save");
          var first = table.querySelector(".note");
          if (first) first.scrollIntoView({ block: "nearest", inline: "nearest" });
        }
        update();
      })
      .catch(function () {
        saving = false;
        say("Could not reach the server; nothing was saved. Your changes are still here.", "bad", "save");
        update();
      });
  }

  function discard() {
    table.querySelectorAll(".note.conflict").forEach(function (note) {
      resolveCell(note.closest("td"), false);
    });
    pendingCells().forEach(function (cell) {
      delete cell.dataset.pending;
      clearRefusals(cell);
      renderCell(cell);
    });
    history = [];
    say("", "", "");
    changed();
  }

  savebar.querySelector("[data-action=save]").addEventListener("click", save);
  savebar.querySelector("[data-action=discard]").addEventListener("click", discard);

  /* Ctrl/Cmd+S saves (not the browser's "save page"); Ctrl/Cmd+Z undoes the last pending
     edit, except in a text box, where it undoes typing as usual. */
  document.addEventListener("keydown", function (event) {
    if (!(event.ctrlKey || event.metaKey) || event.altKey) return;
    var key = event.key.toLowerCase();
    if (key === "s") {
      event.preventDefault();
      var open = editor && editor.cell;
      save();
      if (open && !editor) focusCell(open);
    } else if (key === "z" && !event.shiftKey) {
      var target = event.target;
      var typing = target.matches && target.matches("input:not([type=checkbox]):not([type=radio]), textarea, select, [contenteditable]");
      if (typing) return;
      event.preventDefault();
      if (!saving) undoLast();
    }
  });

  /* ---- the row actions menu: one open at a time, over the table, Escape closes ---- */

  function closeMenus(except) {
    table.querySelectorAll("details.row-menu[open]").forEach(function (menu) {
      if (menu !== except) menu.open = false;
    });
  }

  function placeMenu(details) {
    var menu = details.querySelector(".menu");
    var anchor = details.querySelector("summary").getBoundingClientRect();
    menu.style.position = "fixed";
    menu.style.right = Math.max(4, document.documentElement.clientWidth - anchor.right) + "px";
    menu.style.top = anchor.bottom + 4 + "px";
    var height = menu.offsetHeight;
    if (anchor.bottom + 4 + height > window.innerHeight && anchor.top - 4 - height > 0) {
      menu.style.top = anchor.top - 4 - height + "px";
    }
  }

  table.addEventListener("toggle", function (event) {
    var details = event.target;
    if (!details.classList || !details.classList.contains("row-menu") || !details.open) return;
    closeMenus(details);
    placeMenu(details);
  }, true);

  table.addEventListener("keydown", function (event) {
    var details = event.target.closest && event.target.closest("details.row-menu");
    if (!details || !details.open) return;
    if (event.key === "Escape") {
      event.preventDefault();
      details.open = false;
      details.querySelector("summary").focus();
    } else if (event.key === "ArrowDown" || event.key === "ArrowUp") {
      var items = slice(details.querySelectorAll(".menu button"));
      var index = items.indexOf(event.target);
      var next = items[(index + (event.key === "ArrowDown" ? 1 : items.length - 1)) % items.length];
      if (index < 0) next = items[event.key === "ArrowDown" ? 0 : items.length - 1];
      event.preventDefault();
      next.focus();
    }
  });

  document.addEventListener("click", function (event) {
    var inside = event.target.closest && event.target.closest("details.row-menu");
    closeMenus(inside);
  });
  window.addEventListener("resize", function () { closeMenus(null); });
  window.addEventListener("scroll", function () { closeMenus(null); }, true);

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
  function boxes() { return slice(table.querySelectorAll("input.select")); }
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
