// recsink console: the waveform (peaks drawn in a <canvas> from the audio, decoded by the
// browser's Web Audio API; click to seek) and confirmations of dangerous forms
// (data-confirm). No inline script anywhere: the page's CSP forbids it.
"use strict";

function drawWaveform(canvas, audio) {
  const src = canvas.dataset.src;
  fetch(src, { credentials: "same-origin", headers: { "X-Purpose": "waveform" } })
    .then((r) => (r.ok ? r.arrayBuffer() : Promise.reject(new Error(r.status))))
    .then((bytes) => new OfflineAudioContext(1, 1, 8000).decodeAudioData(bytes))
    .then((buffer) => {
      const data = buffer.getChannelData(0);
      const ctx = canvas.getContext("2d");
      const { width, height } = canvas;
      const per = Math.max(1, Math.floor(data.length / width));
      ctx.clearRect(0, 0, width, height);
      ctx.fillStyle = getComputedStyle(canvas).color;
      for (let x = 0; x < width; x++) {
        let lo = 1, hi = -1;
        for (let i = x * per; i < Math.min((x + 1) * per, data.length); i++) {
          const v = data[i];
          if (v < lo) lo = v;
          if (v > hi) hi = v;
        }
        if (hi < lo) break;
        const top = ((1 - hi) / 2) * height;
        ctx.fillRect(x, top, 1, Math.max(1, ((hi - lo) / 2) * height));
      }
      canvas.dataset.drawn = "true";
    })
    .catch(() => canvas.classList.add("failed"));
  canvas.addEventListener("click", (event) => {
    if (!audio.duration) return;
    const box = canvas.getBoundingClientRect();
    audio.currentTime = ((event.clientX - box.left) / box.width) * audio.duration;
    audio.play();
  });
}

document.addEventListener("DOMContentLoaded", () => {
  const canvas = document.getElementById("waveform");
  const audio = document.getElementById("player");
  if (canvas && audio) drawWaveform(canvas, audio);
  document.querySelectorAll("form[data-confirm]").forEach((form) => {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  });
});
