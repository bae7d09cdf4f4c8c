// Draw a digit, or a whole number: pointer-event drawing on a canvas, debounced
// readings from POST /api/predict (a ten-bar probability chart) and POST
// /api/read-number (each digit's box and reading drawn over the wide canvas),
// Clear, and image files by picker or drag-and-drop. Plain JavaScript;
// everything comes from this server.
"use strict";

(function () {
  const DEBOUNCE_MS = 150;
  const LOW_CONFIDENCE = 0.9; // the CLI's inference.LOW_CONFIDENCE

  function percent(p) {
    if (p > 0.999) return ">99.9%"; // calibrated: never quite sure
    return (p * 100).toFixed(p < 0.001 ? 0 : 1) + "%";
  }

  // ---- a drawing pad: strokes of a round pen on a white canvas ----
  // onStroke(final) is called as a stroke is drawn (final false) and when it ends (true).
  function makePad(canvas, onStroke) {
    const ctx = canvas.getContext("2d", { willReadFrequently: true });
    const lineWidth = canvas.height / 14;
    const pad = { hasInk: false };
    let stroke = null; // the stroke being drawn: {id, snapshot, points}

    pad.reset = function () {
      stroke = null;
      pad.hasInk = false;
      ctx.fillStyle = "#fff";
      ctx.fillRect(0, 0, canvas.width, canvas.height);
    };

    pad.blob = function () {
      return new Promise(function (resolve) { canvas.toBlob(resolve, "image/png"); });
    };

    pad.showImage = function (file) {
      const url = URL.createObjectURL(file);
      const img = new Image();
      img.onload = function () {
        pad.reset();
        pad.hasInk = true; // drawing on top of the image then reads the canvas
        const scale = Math.min(canvas.width / img.width, canvas.height / img.height);
        const w = img.width * scale, h = img.height * scale;
        ctx.drawImage(img, (canvas.width - w) / 2, (canvas.height - h) / 2, w, h);
        URL.revokeObjectURL(url);
      };
      img.onerror = function () { URL.revokeObjectURL(url); };
      img.src = url;
    };

    function point(event) {
      const rect = canvas.getBoundingClientRect();
      return {
        x: (event.clientX - rect.left) * (canvas.width / rect.width),
        y: (event.clientY - rect.top) * (canvas.height / rect.height),
      };
    }

    // A stroke is redrawn whole, as one path, over a snapshot taken when it began:
    // joints stay smooth instead of beading where separate segments overlap.
    function paint() {
      ctx.putImageData(stroke.snapshot, 0, 0);
      ctx.strokeStyle = "#000";
      ctx.fillStyle = "#000";
      ctx.lineWidth = lineWidth;
      ctx.lineCap = "round";
      ctx.lineJoin = "round";
      const pts = stroke.points;
      ctx.beginPath();
      if (pts.length === 1) {
        ctx.arc(pts[0].x, pts[0].y, lineWidth / 2, 0, 2 * Math.PI);
        ctx.fill();
        return;
      }
      ctx.moveTo(pts[0].x, pts[0].y);
      for (let i = 1; i < pts.length; i++) ctx.lineTo(pts[i].x, pts[i].y);
      ctx.stroke();
    }

    canvas.addEventListener("pointerdown", function (event) {
      if (event.pointerType === "mouse" && event.button !== 0) return;
      event.preventDefault();
      if (stroke) return; // one pointer draws at a time (a second finger or a palm is ignored)
      try { canvas.setPointerCapture(event.pointerId); } catch (e) { /* synthetic pointers */ }
      stroke = {
        id: event.pointerId,
        snapshot: ctx.getImageData(0, 0, canvas.width, canvas.height),
        points: [point(event)],
      };
      paint();
      pad.hasInk = true;
      onStroke(false);
    });

    canvas.addEventListener("pointermove", function (event) {
      if (!stroke || event.pointerId !== stroke.id) return;
      event.preventDefault();
      // Coalesced events keep fast strokes smooth where the browser offers them.
      const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [];
      (events.length ? events : [event]).forEach(function (e) { stroke.points.push(point(e)); });
      paint();
      onStroke(false);
    });

    function endStroke(event) {
      if (!stroke || event.pointerId !== stroke.id) return;
      stroke = null;
      onStroke(true);
    }
    canvas.addEventListener("pointerup", endStroke);
    canvas.addEventListener("pointercancel", endStroke);
    canvas.addEventListener("lostpointercapture", endStroke);

    pad.reset();
    return pad;
  }

  // ---- one reader: a pad, its API, debounced requests, one at a time ----
  // view: {busy(flag), empty(message), answer(data, final, job), failed(status, data, job), unreachable(job)}
  function makeReader(pad, api, view) {
    const reader = {};
    let timer = null;        // a scheduled reading
    let inFlight = false;    // a request on its way
    let again = null;        // what to send once the request in flight returns
    let generation = 0;      // bumped by Clear and by new images: late answers are dropped

    function setBusy() {
      view.busy(timer !== null || inFlight || again !== null);
    }

    // job: {body: () => Blob or FormData (or a promise of one), final, file, gen}
    function send(job) {
      if (inFlight) { // one request at a time; keep only the newest wish
        again = job;
        setBusy();
        return;
      }
      inFlight = true;
      setBusy();
      const gen = generation;
      Promise.resolve(job.body())
        .then(function (body) {
          return fetch(api, { method: "POST", body: body }).then(function (response) {
            return response.json().catch(function () { return {}; }).then(function (data) {
              return { ok: response.ok, status: response.status, data: data };
            });
          });
        })
        .then(function (answer) {
          if (gen !== generation) return;
          if (answer.ok) view.answer(answer.data, job.final, job);
          else view.failed(answer.status, answer.data, job);
        })
        .catch(function () {
          if (gen === generation) view.unreachable(job);
        })
        .finally(function () {
          inFlight = false;
          const next = again;
          again = null;
          if (next && next.gen === generation) send(next);
          setBusy();
        });
    }

    reader.schedule = function (final) {
      if (timer !== null) clearTimeout(timer);
      timer = setTimeout(function () {
        timer = null;
        if (pad.hasInk) send({ body: pad.blob, final: final, gen: generation });
        setBusy();
      }, final ? 0 : DEBOUNCE_MS); // read on release at once
      setBusy();
    };

    function forget() {
      generation++;
      if (timer !== null) { clearTimeout(timer); timer = null; }
      again = null;
    }

    reader.clear = function () {
      forget();
      pad.reset();
      view.empty();
      setBusy();
    };

    reader.readFile = function (file) {
      if (!file) return;
      forget();
      pad.reset();
      pad.showImage(file);
      send({
        body: function () { const form = new FormData(); form.append("image", file, file.name); return form; },
        final: true,
        file: true,
        gen: generation,
      });
    };

    return reader;
  }

  // ---- files: picker and drag-and-drop onto a drop zone ----
  function acceptFiles(input, dropZone, readFile) {
    input.addEventListener("change", function () {
      readFile(input.files[0]);
      input.value = ""; // choosing the same file again still fires
    });
    ["dragenter", "dragover"].forEach(function (type) {
      dropZone.addEventListener(type, function (event) {
        event.preventDefault();
        event.dataTransfer.dropEffect = "copy";
        dropZone.classList.add("dragging");
      });
    });
    ["dragleave", "dragend"].forEach(function (type) {
      dropZone.addEventListener(type, function () { dropZone.classList.remove("dragging"); });
    });
    dropZone.addEventListener("drop", function (event) {
      event.preventDefault();
      dropZone.classList.remove("dragging");
      const files = event.dataTransfer && event.dataTransfer.files;
      if (files && files.length) readFile(files[0]);
    });
  }

  // ---- one digit: the square pad and the probability bars ----
  function digitPage() {
    const result = document.getElementById("result");
    const digitEl = document.getElementById("digit");
    const confidenceEl = document.getElementById("confidence");
    const messageEl = document.getElementById("message");
    const announceEl = document.getElementById("announce");
    const barsEl = document.getElementById("bars");

    const bars = [];
    for (let d = 0; d < 10; d++) {
      const li = document.createElement("li");
      li.className = "bar";
      li.innerHTML =
        '<span class="bar-label"></span>' +
        '<span class="bar-track" aria-hidden="true"><span class="bar-fill"></span></span>' +
        '<span class="bar-value"></span>';
      li.querySelector(".bar-label").textContent = String(d);
      li.querySelector(".bar-label").setAttribute("aria-label", "digit " + d + ":");
      barsEl.appendChild(li);
      bars.push({ li: li, fill: li.querySelector(".bar-fill"), value: li.querySelector(".bar-value") });
    }

    function showBars(probabilities) {
      const top = probabilities ? probabilities.indexOf(Math.max.apply(null, probabilities)) : -1;
      bars.forEach(function (bar, d) {
        const p = probabilities ? probabilities[d] : 0;
        bar.fill.style.width = (p * 100).toFixed(1) + "%";
        bar.value.textContent = probabilities ? percent(p) : "–";
        bar.li.classList.toggle("top", d === top);
      });
    }

    function showError(message, final) {
      result.dataset.state = "error";
      digitEl.textContent = "?";
      confidenceEl.textContent = "";
      messageEl.textContent = message;
      showBars(null);
      if (final) announceEl.textContent = message;
    }

    const view = {
      busy: function (flag) { result.dataset.busy = String(flag); },
      empty: function () {
        result.dataset.state = "empty";
        digitEl.textContent = "–";
        confidenceEl.textContent = "";
        messageEl.textContent = "Draw a digit to see what the model thinks it is.";
        showBars(null);
        announceEl.textContent = "Cleared.";
      },
      answer: function (data, final) {
        result.dataset.state = "done";
        const notDigit = data.is_digit === false;
        result.dataset.notDigit = String(notDigit);
        digitEl.textContent = notDigit ? "?" : String(data.digit);
        confidenceEl.textContent = notDigit ? "not a digit" : percent(data.confidence) + " sure";
        messageEl.textContent = notDigit
          ? "That does not look like one digit (best guess " + data.digit + ", " + percent(data.confidence) + ")."
          : data.confidence < LOW_CONFIDENCE ? "Not sure: try drawing it larger or more clearly." : "";
        showBars(data.probabilities);
        if (final) {
          announceEl.textContent = notDigit
            ? "Not a digit. Best guess " + data.digit + ", " + percent(data.confidence) + "."
            : "Predicted digit " + data.digit + ", " + percent(data.confidence) + " confidence.";
        }
      },
      failed: function (status, data, job) {
        if (status === 422) {
          showError(job.file ? "No digit found in that image." : "No digit found: draw a digit, a little larger.",
                    job.final);
        } else {
          showError(data.error || ("The server answered " + status + "."), job.final);
        }
      },
      unreachable: function (job) { showError("Cannot reach the server.", job.final); },
    };

    let reader = null;
    const pad = makePad(document.getElementById("pad"), function (final) { reader.schedule(final); });
    reader = makeReader(pad, "/api/predict", view);
    document.getElementById("clear").addEventListener("click", reader.clear);
    acceptFiles(document.getElementById("file"), document.getElementById("drop-zone"), function (file) {
      messageEl.textContent = "Classifying " + file.name + "…";
      reader.readFile(file);
    });
    showBars(null);
    view.busy(false);
  }

  // ---- a whole number: the wide pad, each digit's box over it ----
  function numberPage() {
    const canvas = document.getElementById("number-pad");
    const overlay = document.getElementById("number-boxes");
    const boxes = overlay.getContext("2d");
    const result = document.getElementById("number-result");
    const textEl = document.getElementById("number-text");
    const confidenceEl = document.getElementById("number-confidence");
    const messageEl = document.getElementById("number-message");
    const announceEl = document.getElementById("number-announce");
    const digitsEl = document.getElementById("number-digits");

    // An image shown on the pad is scaled to fit it: the boxes the server gives in the
    // image's pixels are drawn in the pad's, through the same fit.
    let fit = { scale: 1, left: 0, top: 0 };

    function drawBoxes(digits) {
      boxes.clearRect(0, 0, overlay.width, overlay.height);
      (digits || []).forEach(function (d) {
        const x0 = fit.left + d.box[0] * fit.scale, y0 = fit.top + d.box[1] * fit.scale;
        const w = (d.box[2] - d.box[0]) * fit.scale, h = (d.box[3] - d.box[1]) * fit.scale;
        const sure = d.confidence >= LOW_CONFIDENCE;
        boxes.strokeStyle = sure ? "#1f6feb" : "#b42318";
        boxes.fillStyle = boxes.strokeStyle;
        boxes.lineWidth = 3;
        boxes.strokeRect(x0, y0, w, h);
        boxes.font = "bold 28px system-ui, sans-serif";
        boxes.fillText(String(d.digit), x0 + 2, Math.max(26, y0 - 6));
      });
    }

    function showDigits(digits) {
      digitsEl.textContent = "";
      (digits || []).forEach(function (d) {
        const li = document.createElement("li");
        li.textContent = d.digit + " (" + percent(d.confidence) + ")";
        if (d.confidence < LOW_CONFIDENCE) li.className = "unsure";
        digitsEl.appendChild(li);
      });
    }

    function showError(message, final) {
      result.dataset.state = "error";
      textEl.textContent = "?";
      confidenceEl.textContent = "";
      messageEl.textContent = message;
      showDigits(null);
      drawBoxes(null);
      if (final) announceEl.textContent = message;
    }

    const view = {
      busy: function (flag) { result.dataset.busy = String(flag); },
      empty: function () {
        fit = { scale: 1, left: 0, top: 0 };
        result.dataset.state = "empty";
        textEl.textContent = "–";
        confidenceEl.textContent = "";
        messageEl.textContent = "Write a number to see each digit read.";
        showDigits(null);
        drawBoxes(null);
        announceEl.textContent = "Cleared.";
      },
      answer: function (data, final) {
        result.dataset.state = "done";
        result.dataset.digits = String(data.digits.length);
        textEl.textContent = data.number;
        confidenceEl.textContent = percent(data.confidence) + " sure";
        const unsure = data.digits.some(function (d) { return d.confidence < LOW_CONFIDENCE; });
        messageEl.textContent = unsure ? "Not sure of a digit (red): try writing it more clearly." : "";
        showDigits(data.digits);
        drawBoxes(data.digits);
        if (final) announceEl.textContent = "Read the number " + data.number.split("").join(" ") + ".";
      },
      failed: function (status, data, job) {
        if (status === 422) {
          showError(job.file ? "No number found in that image." : "No digits found: write a number, a little larger.",
                    job.final);
        } else {
          showError(data.error || ("The server answered " + status + "."), job.final);
        }
      },
      unreachable: function (job) { showError("Cannot reach the server.", job.final); },
    };

    let reader = null;
    const pad = makePad(canvas, function (final) { reader.schedule(final); });
    reader = makeReader(pad, "/api/read-number", view);
    document.getElementById("number-clear").addEventListener("click", reader.clear);
    acceptFiles(document.getElementById("number-file"), document.getElementById("number-zone"), function (file) {
      messageEl.textContent = "Reading " + file.name + "…";
      const probe = new Image();
      const url = URL.createObjectURL(file);
      probe.onload = function () { // the fit pad.showImage uses, for the boxes
        const scale = Math.min(canvas.width / probe.width, canvas.height / probe.height);
        fit = { scale: scale, left: (canvas.width - probe.width * scale) / 2,
                top: (canvas.height - probe.height * scale) / 2 };
        URL.revokeObjectURL(url);
      };
      probe.src = url;
      reader.readFile(file);
    });
    // drawing again after an image reads the canvas itself: its boxes are in its own pixels
    canvas.addEventListener("pointerdown", function () { fit = { scale: 1, left: 0, top: 0 }; });
    view.empty();
    announceEl.textContent = "";
    view.busy(false);
  }

  digitPage();
  numberPage();
  // A file dropped beside a pad should not navigate away from the page.
  window.addEventListener("dragover", function (event) { event.preventDefault(); });
  window.addEventListener("drop", function (event) { event.preventDefault(); });
})();
