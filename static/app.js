// Draw a digit: pointer-event drawing on a canvas, debounced predictions from
// POST /api/predict, a ten-bar probability chart, Clear, and image files by
// picker or drag-and-drop. Plain JavaScript; everything comes from this server.
"use strict";

(function () {
  const DEBOUNCE_MS = 150;
  const API = "/api/predict";
  const LOW_CONFIDENCE = 0.5; // the CLI's inference.LOW_CONFIDENCE

  const canvas = document.getElementById("pad");
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  const dropZone = document.getElementById("drop-zone");
  const clearButton = document.getElementById("clear");
  const fileInput = document.getElementById("file");
  const result = document.getElementById("result");
  const digitEl = document.getElementById("digit");
  const confidenceEl = document.getElementById("confidence");
  const messageEl = document.getElementById("message");
  const announceEl = document.getElementById("announce");
  const barsEl = document.getElementById("bars");

  const lineWidth = canvas.width / 14;
  let hasInk = false;
  let stroke = null;       // the stroke being drawn: {id, snapshot, points}
  let timer = null;        // a scheduled prediction
  let inFlight = false;    // a request on its way
  let again = null;        // what to send once the request in flight returns
  let generation = 0;      // bumped by Clear and by new images: late answers are dropped

  // ---- the bar chart: one labelled list item per digit ----
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
    bars.push({
      li: li,
      fill: li.querySelector(".bar-fill"),
      value: li.querySelector(".bar-value"),
    });
  }

  function percent(p) {
    return (p * 100).toFixed(p >= 0.995 || p < 0.001 ? 0 : 1) + "%";
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

  function setBusy() {
    result.dataset.busy = String(timer !== null || inFlight || again !== null);
  }

  function showEmpty(message) {
    result.dataset.state = "empty";
    digitEl.textContent = "–";
    confidenceEl.textContent = "";
    messageEl.textContent = message || "Draw a digit to see what the model thinks it is.";
    showBars(null);
  }

  function showPrediction(data, final) {
    result.dataset.state = "done";
    digitEl.textContent = String(data.digit);
    confidenceEl.textContent = percent(data.confidence) + " sure";
    messageEl.textContent = data.confidence < LOW_CONFIDENCE ? "Not sure: try drawing it larger or more clearly." : "";
    showBars(data.probabilities);
    if (final) {
      announceEl.textContent = "Predicted digit " + data.digit + ", " + percent(data.confidence) + " confidence.";
    }
  }

  function showError(message, final) {
    result.dataset.state = "error";
    digitEl.textContent = "?";
    confidenceEl.textContent = "";
    messageEl.textContent = message;
    showBars(null);
    if (final) announceEl.textContent = message;
  }

  // ---- talking to the server ----
  function canvasBlob() {
    return new Promise(function (resolve) { canvas.toBlob(resolve, "image/png"); });
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
        return fetch(API, { method: "POST", body: body }).then(function (response) {
          return response.json().catch(function () { return {}; }).then(function (data) {
            return { ok: response.ok, status: response.status, data: data };
          });
        });
      })
      .then(function (answer) {
        if (gen !== generation) return;
        if (answer.ok) {
          showPrediction(answer.data, job.final);
        } else if (answer.status === 422) {
          showError(job.file ? "No digit found in that image." : "No digit found: draw a digit, a little larger.",
                    job.final);
        } else {
          showError(answer.data.error || ("The server answered " + answer.status + "."), job.final);
        }
      })
      .catch(function () {
        if (gen === generation) showError("Cannot reach the server.", job.final);
      })
      .finally(function () {
        inFlight = false;
        const next = again;
        again = null;
        if (next && next.gen === generation) send(next);
        setBusy();
      });
  }

  function predictDrawing(final) {
    if (!hasInk) return;
    send({ body: canvasBlob, final: final, gen: generation });
  }

  function schedule(delay, final) {
    if (timer !== null) clearTimeout(timer);
    timer = setTimeout(function () {
      timer = null;
      predictDrawing(final);
      setBusy();
    }, delay);
    setBusy();
  }

  // ---- drawing ----
  function resetCanvas() {
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
  }

  function point(event) {
    const rect = canvas.getBoundingClientRect();
    return {
      x: (event.clientX - rect.left) * (canvas.width / rect.width),
      y: (event.clientY - rect.top) * (canvas.height / rect.height),
    };
  }

  function startInk() {
    ctx.strokeStyle = "#000";
    ctx.fillStyle = "#000";
    ctx.lineWidth = lineWidth;
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
  }

  // A stroke is redrawn whole, as one path, over a snapshot taken when it began:
  // joints stay smooth instead of beading where separate segments overlap.
  function paint(stroke) {
    ctx.putImageData(stroke.snapshot, 0, 0);
    startInk();
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
    paint(stroke);
    hasInk = true;
    schedule(DEBOUNCE_MS, false);
  });

  canvas.addEventListener("pointermove", function (event) {
    if (!stroke || event.pointerId !== stroke.id) return;
    event.preventDefault();
    // Coalesced events keep fast strokes smooth where the browser offers them.
    const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [];
    (events.length ? events : [event]).forEach(function (e) { stroke.points.push(point(e)); });
    paint(stroke);
    schedule(DEBOUNCE_MS, false);
  });

  function endStroke(event) {
    if (!stroke || event.pointerId !== stroke.id) return;
    stroke = null;
    schedule(0, true); // predict on release, at once
  }
  canvas.addEventListener("pointerup", endStroke);
  canvas.addEventListener("pointercancel", endStroke);
  canvas.addEventListener("lostpointercapture", endStroke);

  function clear() {
    generation++;
    if (timer !== null) { clearTimeout(timer); timer = null; }
    again = null;
    stroke = null;
    hasInk = false;
    resetCanvas();
    showEmpty();
    announceEl.textContent = "Cleared.";
    setBusy();
  }
  clearButton.addEventListener("click", clear);

  // ---- image files: picker and drag-and-drop ----
  function showFileOnCanvas(file) {
    const url = URL.createObjectURL(file);
    const img = new Image();
    img.onload = function () {
      resetCanvas();
      const scale = Math.min(canvas.width / img.width, canvas.height / img.height);
      const w = img.width * scale, h = img.height * scale;
      ctx.drawImage(img, (canvas.width - w) / 2, (canvas.height - h) / 2, w, h);
      URL.revokeObjectURL(url);
    };
    img.onerror = function () { URL.revokeObjectURL(url); };
    img.src = url;
  }

  function predictFile(file) {
    if (!file) return;
    generation++;
    if (timer !== null) { clearTimeout(timer); timer = null; }
    again = null;
    stroke = null;
    hasInk = true; // drawing on top of the image then classifies the canvas
    resetCanvas();
    showFileOnCanvas(file);
    messageEl.textContent = "Classifying " + file.name + "…";
    send({
      body: function () { const form = new FormData(); form.append("image", file, file.name); return form; },
      final: true,
      file: true,
      gen: generation,
    });
  }

  fileInput.addEventListener("change", function () {
    predictFile(fileInput.files[0]);
    fileInput.value = ""; // choosing the same file again still fires
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
    if (files && files.length) predictFile(files[0]);
  });
  // A file dropped beside the square should not navigate away from the page.
  window.addEventListener("dragover", function (event) { event.preventDefault(); });
  window.addEventListener("drop", function (event) { event.preventDefault(); });

  resetCanvas();
  showEmpty();
  setBusy();
})();
