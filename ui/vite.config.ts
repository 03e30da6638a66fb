import { defineConfig } from "vite";

// Tauri serves the built files from ui/dist; the dev server runs on 5173.
export default defineConfig({
  clearScreen: false,
  server: { port: 5173, strictPort: true },
  build: { outDir: "dist", target: "es2022" },
});
