import { defineConfig } from "vitest/config";

// Tauri serves the built files from ui/dist; the dev server runs on 5173.
// Unit tests run in jsdom (the views build DOM; nothing reaches Tauri).
export default defineConfig({
  clearScreen: false,
  server: { port: 5173, strictPort: true },
  build: { outDir: "dist", target: "es2022" },
  test: { environment: "jsdom", include: ["src/**/*.test.ts"] },
});
